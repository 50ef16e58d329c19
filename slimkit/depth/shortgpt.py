"""ShortGPT-style depth pruning (Men et al., 2024): drop the layers that change the hidden state least.

Block influence BI_ℓ = 1 − E[cos(x_ℓ, x_{ℓ+1})] on the calibration set; the layers with the lowest BI are
removed in one shot, the rest are kept untouched. The layer-dropping baseline FlattenGPT must beat, run
in the same framework (same calibration, similarity pass, saving and checks).
"""

from __future__ import annotations

from typing import Any

import torch

from slimkit.depth.driver import ContextFor
from slimkit.depth.similarity import lowest_influence_kept
from slimkit.modeling.modeling_slim import SlimConfig, SlimDecoderLayer


class ShortGPT:
    name = "shortgpt"

    def plan(self, similarity: torch.Tensor, remove: int) -> list[list[int]]:
        return lowest_influence_kept(similarity, remove)

    def merge(
        self,
        layers: list[SlimDecoderLayer],
        config: SlimConfig,
        context_for: ContextFor,
        store_dtype: torch.dtype,
        serial: torch.Tensor,
    ) -> tuple[SlimDecoderLayer, dict[str, Any]]:
        raise AssertionError("ShortGPT drops layers; it never merges")
