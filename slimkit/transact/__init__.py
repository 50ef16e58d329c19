"""TransAct (Shen et al., 2024): prune transitional activations, iteratively, with recovery training (§4).

Whole heads (full width) and MLP channels go, by the L2 norm of the activations that feed `o_proj` and
`down_proj`; every layer keeps the same shape, so the output is the source family's stock architecture
(fewer heads and KV heads, a narrower MLP, explicit `head_dim`) that loads without remote code and that
serving engines run. Modules: `scores` (calibration statistics), `plan` (the selection rule and the widths
a ratio maps to), `prune` (the structured selection), `driver` (the shots and between-shot training).
"""

from dataclasses import dataclass

from slimkit.transact.driver import TransActSpec, compress_transact


@dataclass(frozen=True)
class TransAct:
    """The registry's entry: TransAct shapes the whole model at once (`compress_transact`), not layer by layer."""

    name: str = "transact"


__all__ = ["TransAct", "TransActSpec", "compress_transact"]
