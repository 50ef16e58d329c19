"""Depth compression driver: plan which layers become one (or go), then rebuild the stack layer by layer.

1. One dense forward gives the hidden-state similarity matrix (`slimkit.depth.similarity`).
2. The method turns it into a plan: the new layers in order, each the list of source layers it replaces
   (one layer: kept as it is; several: merged; a layer in no group: dropped).
3. A second pass walks the plan with the calibration inputs of the *already rebuilt* prefix (sequential,
   like the width methods): a kept layer just runs; a group is merged by the method, on the inputs its
   merged layer will really see. The model keeps the stock shape throughout, so the output is the
   source family's own architecture with fewer layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from slimkit.depth.similarity import hidden_state_similarity, removed_layers
from slimkit.errors import Cancelled
from slimkit.layerwise import LayerContext, run_layer
from slimkit.modeling.modeling_slim import SlimConfig, SlimDecoderLayer, SlimForCausalLM

ContextFor = Callable[[SlimDecoderLayer, SlimConfig], LayerContext]


class DepthMethod(Protocol):
    """What the driver needs from a depth method."""

    name: str

    def plan(self, similarity: torch.Tensor, remove: int) -> list[list[int]]:
        """The new layers in order, each as the source layers it stands for (absent ones are dropped)."""
        ...

    def merge(
        self,
        layers: list[SlimDecoderLayer],
        config: SlimConfig,
        context_for: ContextFor,
        store_dtype: torch.dtype,
        serial: torch.Tensor,
    ) -> tuple[SlimDecoderLayer, dict[str, Any]]:
        """One layer of the dense shape standing for `layers` (on the device, compute dtype) + a report.

        `serial`: the group's own outputs on the calibration inputs, (n, T, d) like the inputs.
        """
        ...


@torch.no_grad()
def compress_depth(
    model: SlimForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    method: DepthMethod,
    ratio: float,
    device: torch.device,
    batch_size: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Replace `model`'s layers in place by the method's plan; returns the depth record."""
    notify = progress or (lambda stage, done, total: None)
    config = model.config
    n_layers = config.num_hidden_layers
    remove = removed_layers(ratio, n_layers)
    store_dtype = model.model.embed_tokens.weight.dtype
    compute_dtype = torch.float32 if device.type == "cpu" else store_dtype
    storage = device if device.type == "cuda" else torch.device("cpu")
    similarity = hidden_state_similarity(
        model,
        input_ids,
        attention_mask,
        device,
        compute_dtype,
        batch_size,
        progress=lambda i, n: notify("similarity", i, n),
    )
    groups = method.plan(similarity, remove)

    inputs = model.model.embed_tokens(input_ids.to(model.device)).to(storage, compute_dtype)  # (n, T, d)
    rotary = model.model.rotary_emb.to(device)
    cos, sin = rotary(inputs[:1].to(device), torch.arange(input_ids.shape[1], device=device)[None])
    token_mask = attention_mask.bool().to(storage)
    old = list(model.model.layers)
    new_layers, reports = [], []

    def context_for(layer: SlimDecoderLayer, layer_config: SlimConfig, index: int = 0) -> LayerContext:
        return LayerContext(layer, index, layer_config, inputs, token_mask, cos, sin, device, compute_dtype, batch_size)

    bar = tqdm(groups, desc=method.name, unit="layer", disable=not show_progress)
    for new_index, group in enumerate(bar):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled before new layer {new_index}")
        report: dict[str, Any] = {"layer": new_index, "sources": group}
        if len(group) == 1:
            layer = old[group[0]].to(device, compute_dtype)
            outputs = run_layer(context_for(layer, config, group[0]), layer)
        else:
            sources = [old[i].to(device, compute_dtype) for i in group]
            serial = inputs
            for i, source in zip(group, sources, strict=True):
                serial = run_layer(_with_inputs(context_for(source, config, i), serial), source)
            layer, merge_report = method.merge(sources, config, context_for, store_dtype, serial)
            outputs = run_layer(context_for(layer, config, group[0]), layer)
            report |= merge_report | {"output_error": _relative_update_error(outputs, serial, inputs, token_mask)}
            for source in sources:
                source.to("cpu")
        new_layers.append(layer.to("cpu", store_dtype))
        reports.append(report)
        inputs = outputs
        notify("compress", new_index + 1, len(groups))
    rotary.to("cpu")
    for i, layer in enumerate(new_layers):
        layer.self_attn.layer_idx = i  # the KV cache is indexed by position in the new stack
    model.model.layers = torch.nn.ModuleList(new_layers)
    config.num_hidden_layers = len(new_layers)
    return {
        "layers_before": n_layers,
        "layers_after": len(new_layers),
        "removed_layers": n_layers - len(new_layers),
        "groups": groups,
        "similarity": [[round(float(v), 5) for v in row] for row in similarity],
        "layers": reports,
    }


def _with_inputs(ctx: LayerContext, inputs: torch.Tensor) -> LayerContext:
    ctx.inputs = inputs
    return ctx


def _relative_update_error(
    got: torch.Tensor, want: torch.Tensor, inputs: torch.Tensor, valid: torch.Tensor, rows: int = 8
) -> float:
    """‖got − want‖² / ‖want − inputs‖² over valid tokens: the merged layer against the group's update."""
    err = update = 0.0
    for start in range(0, got.shape[0], rows):  # a few windows at a time: no full fp32 copies
        sl = slice(start, start + rows)
        keep = valid[sl]
        want_f = want[sl].float()
        err += float((got[sl].float() - want_f)[keep].pow(2).sum())
        update += float((want_f - inputs[sl].float())[keep].pow(2).sum())
    return err / max(update, 1e-30)
