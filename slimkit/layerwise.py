"""Sequential layer-by-layer compression driver (algorithms.md §3.2, §9.2).

The model stays on CPU; one decoder layer at a time moves to the target device. Layer-0 inputs are the
embeddings of the calibration windows, computed once. Each layer is compressed attention first, then MLP
(whose statistics are collected *through the already-pruned attention*), and its outputs are recomputed
with the pruned layer before they feed the next layer, so every layer corrects for the error of the ones
before it (sequential error propagation, as in SliceGPT and IntraSlice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from accelerate import init_empty_weights
from tqdm.auto import tqdm

from slimkit.errors import Cancelled
from slimkit.modeling.modeling_slim import SlimConfig, SlimDecoderLayer, SlimForCausalLM, attention_mask_for
from slimkit.shapes import MLP_ROUND, Shape, attention_params, get_shapes, mlp_params, set_shape

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LayerTarget:
    """Fractions of one layer's attention and MLP parameters to remove."""

    attention: float
    mlp: float


@dataclass
class LayerContext:
    """Everything a method needs to compress one layer; `layer` is on `device` in `dtype`."""

    layer: SlimDecoderLayer
    index: int
    config: SlimConfig
    inputs: torch.Tensor  # (n, T, d) layer inputs, in `dtype`
    token_mask: torch.Tensor  # (n, T) bool: False on padding, excluded from every statistic
    cos: torch.Tensor  # (1, T, d_h) RoPE tables at the original head width
    sin: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    # Dense targets (`compensation_target = "dense"`): the uncompressed model's inputs to this layer and the
    # layer as it was before compression. None: targets are the unpruned layer on the current inputs.
    reference: torch.Tensor | None = None
    dense_layer: SlimDecoderLayer | None = None

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(x (b, T, d), valid (b, T) bool, additive attention mask or None) on the device."""
        for x, _, valid, mask in self.paired_batches():
            yield x, valid, mask

    def paired_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(x, x_ref, valid, mask): x_ref is the dense model's input for the same tokens (x itself without one)."""
        T = self.inputs.shape[1]
        for start in range(0, self.inputs.shape[0], self.batch_size):
            x = self.inputs[start : start + self.batch_size].to(self.device, self.dtype)
            ref = x if self.reference is None else self.reference[start : start + self.batch_size]
            valid = self.token_mask[start : start + self.batch_size].to(self.device)
            mask = attention_mask_for(valid, T, 0, self.config.sliding_window, self.dtype, self.device)
            yield x, ref.to(self.device, self.dtype), valid, mask

    @property
    def target_layer(self) -> SlimDecoderLayer:
        """The layer whose outputs the compensation fits: the dense one, or the current one."""
        return self.layer if self.dense_layer is None else self.dense_layer

    @property
    def shape(self) -> Shape:
        return get_shapes(self.config)[self.index]


@dataclass
class Replacement:
    """A method's answer for one module: new tensors (canonical names, layer-relative) and the new shape."""

    state: StateDict
    shape: Shape
    report: dict[str, Any] = field(default_factory=dict)


class LayerMethod(Protocol):
    """What the driver needs from a method: compress the attention, then the MLP, of one layer."""

    name: str
    uniform_bias: float  # λ_b of a uniform ratio target (the MLP's share; 1 = equal fractions)

    def prune_attention(self, ctx: LayerContext, ratio: float) -> Replacement: ...

    def prune_mlp(self, ctx: LayerContext, ratio: float) -> Replacement: ...

    def with_head_step(self, step: int) -> LayerMethod:
        """The same method with kept heads' widths on a grid of `step` channels (2 = free even widths)."""
        ...


def build_layer(
    config: SlimConfig,
    index: int,
    shape: Shape,
    state: StateDict,
    device: torch.device,
    store_dtype: torch.dtype,
    compute_dtype: torch.dtype,
) -> SlimDecoderLayer:
    """Record `shape` for layer `index` and return a fresh layer of that shape holding `state`.

    The tensors are cast once to the stored dtype, then to the compute dtype: the layer computes with
    exactly the weights that will be saved.
    """
    set_shape(config, index, shape)
    with init_empty_weights(include_buffers=False):
        layer = SlimDecoderLayer(config, index)
    layer.load_state_dict({k: v.to(device, store_dtype) for k, v in state.items()}, assign=True)
    return layer.to(device, compute_dtype).eval()


def rebuild_layer(ctx: LayerContext, replacement: Replacement, store_dtype: torch.dtype) -> SlimDecoderLayer:
    """A fresh layer of the new shape holding the old tensors overridden by the replacement's, cast once."""
    state = {k: v.detach() for k, v in ctx.layer.state_dict().items()}
    state.update(replacement.state)
    return build_layer(ctx.config, ctx.index, replacement.shape, state, ctx.device, store_dtype, ctx.dtype)


@torch.no_grad()
def run_layer(ctx: LayerContext, layer: SlimDecoderLayer) -> torch.Tensor:
    """The layer's outputs for all calibration inputs, stored like the inputs."""
    outputs = torch.empty_like(ctx.inputs)
    start = 0
    for x, _, mask in ctx.batches():
        out = layer(x, ctx.cos, ctx.sin, mask)
        outputs[start : start + x.shape[0]] = out.to(outputs.device, outputs.dtype)
        start += x.shape[0]
    return outputs


class BudgetLedger:
    """Parameters owed to the targets so far versus parameters removed, across layers.

    Attention moves in coarse steps (whole heads, head widths on an 8-channel grid under GQA) and the MLP
    in 8-channel steps, so a layer rarely removes exactly its target. Each layer's MLP is asked for its own
    target plus whatever is still owed (attention's shortfall or excess, earlier layers' rounding), so the
    model as a whole lands within one MLP step of the requested reduction. An MLP whose target is 0 is left
    alone (explicit per-layer targets mean it); its debt passes on to the next layer.
    """

    def __init__(self) -> None:
        self.owed = 0.0  # parameters the targets asked for so far
        self.removed = 0  # parameters actually removed so far

    def owe(self, params: float) -> None:
        self.owed += params

    def pay(self, params: int) -> None:
        self.removed += params

    def mlp_ratio(self, target: float, mlp_params: int, width: int, limit: float = 0.9, step: int = MLP_ROUND) -> float:
        """The MLP ratio that settles the balance to the nearest `step` channels, at most `limit`.

        Returned as drop / width with drop a multiple of `step`, which the MLP pruner maps back to
        exactly that drop; `target` itself if it is 0.
        """
        if target <= 0:
            return target
        channels = (self.owed - self.removed) / mlp_params * width
        drop = round(channels / step) * step
        return min(max(drop, 0), int(limit * width) // step * step) / width


def compress_attention(
    method: LayerMethod, ctx: LayerContext, ratio: float, ledger: BudgetLedger, store_dtype: torch.dtype
) -> Replacement:
    """Compress the layer's attention in place (ctx.layer is rebuilt) and book its target and removal."""
    before = attention_params(ctx.shape, ctx.config)
    attn = method.prune_attention(ctx, ratio)
    ctx.layer = rebuild_layer(ctx, attn, store_dtype)
    ledger.owe(ratio * before)
    ledger.pay(before - attention_params(attn.shape, ctx.config))
    return attn


@torch.no_grad()
def compress_model(
    model: SlimForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    method: LayerMethod,
    targets: list[LayerTarget],
    device: torch.device,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Compress every decoder layer of `model` in place; returns one report per layer."""
    config = model.config
    store_dtype = model.model.embed_tokens.weight.dtype
    # CPU kernels for half precision are slow and inexact: compute in fp32 there, in the model dtype on GPUs.
    compute_dtype = torch.float32 if device.type == "cpu" else store_dtype
    storage = device if device.type == "cuda" else torch.device("cpu")
    inputs = model.model.embed_tokens(input_ids.to(model.device)).to(storage, compute_dtype)  # (n, T, d)
    positions = torch.arange(input_ids.shape[1], device=device)[None]
    rotary = model.model.rotary_emb.to(device)
    cos, sin = rotary(inputs[:1].to(device), positions)
    token_mask = attention_mask.bool().to(storage)
    reports = []
    layers = model.model.layers
    ledger = BudgetLedger()
    bar = tqdm(range(len(layers)), desc=f"{method.name}", unit="layer", disable=not show_progress)
    dense_targets = getattr(method, "compensation_target", "layer") == "dense"
    reference = inputs.clone() if dense_targets else None  # the dense model's layer inputs
    mlp_first = getattr(method, "order", "attention_first") == "mlp_first"
    step = getattr(method, "mlp_step", MLP_ROUND)
    for i in bar:
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled before layer {i}")
        layer = layers[i].to(device, compute_dtype)
        ctx = LayerContext(layer, i, config, inputs, token_mask, cos, sin, device, compute_dtype, batch_size)
        if dense_targets:
            ctx.reference, ctx.dense_layer = reference, layer
        m_params = mlp_params(ctx.shape, config)
        if not mlp_first:
            attn = compress_attention(method, ctx, targets[i].attention, ledger, store_dtype)
        ledger.owe(targets[i].mlp * m_params)
        mlp_ratio = ledger.mlp_ratio(targets[i].mlp, m_params, ctx.shape["intermediate_size"], step=step)
        mlp = method.prune_mlp(ctx, mlp_ratio)
        ctx.layer = rebuild_layer(ctx, mlp, store_dtype)
        ledger.pay(m_params - mlp_params(mlp.shape, config))
        if mlp_first:  # ablation: the MLP compressed through the unpruned attention, attention second
            attn = compress_attention(method, ctx, targets[i].attention, ledger, store_dtype)
        if reference is not None:
            reference = run_layer(dataclasses.replace(ctx, inputs=reference, reference=None), layer)
        inputs = run_layer(ctx, ctx.layer)
        layers[i] = ctx.layer.to("cpu", store_dtype)
        reports.append(
            {
                "layer": i,
                **{f"attention_{k}": v for k, v in attn.report.items()},
                "mlp_ratio_target": targets[i].mlp,
                "mlp_ratio_used": mlp_ratio,
                **{f"mlp_{k}": v for k, v in mlp.report.items()},
            }
        )
        if progress is not None:
            progress(i + 1, len(layers))
    rotary.to("cpu")
    return reports
