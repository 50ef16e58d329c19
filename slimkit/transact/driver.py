"""TransAct's pruning stage: K shots of score → prune → (optionally) distil, towards one uniform shape (§4.4).

Shot t rescores the *current* model (already pruned, possibly trained) and cuts every layer to the t-th
step of a linear descent to the target widths, chosen once from the first scores (`plan_for_ratio`).
Between shots the dense source model is distilled into the pruned one (the recovery stage's loss and
optimiser) with TransAct's budget shape: shot i of K gets a share ∝ 1/2 + (i−1)/(K−1) of the tokens and a
peak learning rate of lr · 2i/K, so later, larger cuts get more training. `shots=1` with no tokens is the
"prune-only" mode; the optional final recovery is the pipeline's ordinary recovery stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from slimkit.errors import Cancelled, InvalidArgument
from slimkit.modeling.modeling_slim import SlimForCausalLM
from slimkit.recovery import RecoverySpec, layer_boundaries, recover
from slimkit.shapes import get_shapes
from slimkit.transact.plan import AttentionShape, head_scores, plan_for_ratio, select_heads, shot_widths
from slimkit.transact.prune import prune_layer
from slimkit.transact.scores import transitional_scores

MAX_SHOTS = 64
Windows = tuple[torch.Tensor, torch.Tensor]  # (ids, mask)
Progress = Callable[[str, int, int], None]


@dataclass
class TransActSpec:
    shots: int = 1  # K: pruning shots, each rescoring the current model
    recovery_tokens: int = 0  # distillation tokens spread over the shots (0: prune only)

    def validate(self) -> None:
        if not 1 <= self.shots <= MAX_SHOTS:
            raise InvalidArgument(f"transact shots must be in [1, {MAX_SHOTS}], got {self.shots}")
        if self.recovery_tokens < 0:
            raise InvalidArgument(f"transact recovery_tokens must be >= 0, got {self.recovery_tokens}")


def shot_budgets(tokens: int, shots: int, seq_len: int = 1) -> list[int]:
    """Tokens per shot, ∝ 1/2 + (i−1)/(K−1) (TransAct's schedule), in whole windows of `seq_len`.

    The budget is ⌈tokens / seq_len⌉ windows in all (what one recovery of `tokens` would train on),
    split by the weights, the rounding remainder going to the last shot.
    """
    windows = -(-tokens // seq_len)
    weights = [0.5 + (i / (shots - 1) if shots > 1 else 0.5) for i in range(shots)]
    split = [int(windows * w / sum(weights)) for w in weights]
    split[-1] += windows - sum(split)
    return [n * seq_len for n in split]


def compress_transact(
    model: SlimForCausalLM,
    calibration: Windows,
    ratio: float,
    cap: float,
    spec: TransActSpec,
    device: torch.device,
    batch_size: int = 8,
    recovery: RecoverySpec | None = None,
    training_windows: Callable[[RecoverySpec], Windows] | None = None,
    load_teacher: Callable[[], torch.nn.Module] | None = None,
    allowed: Callable[[AttentionShape], bool] = lambda shape: True,
    progress: Progress | None = None,
    metric: Callable[[str, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Prune `model` in place to one stock shape removing `ratio` of its attention+MLP; returns the report.

    recovery: the distillation settings for between-shot training (its `tokens` are replaced by each
    shot's budget); training_windows(spec) draws that many windows; load_teacher() gives the dense model;
    allowed(shape): whether the output's stock config accepts a head layout.
    """
    notify = progress or (lambda stage, done, total: None)
    metric = metric or (lambda name, value: None)
    L = model.config.num_hidden_layers
    first = get_shapes(model.config)[0]
    dense = AttentionShape(first["num_key_value_heads"], first["num_attention_heads"] // first["num_key_value_heads"])
    # Original indices of what each layer still holds, for the record.
    q_orig = [list(range(dense.heads)) for _ in range(L)]
    kv_orig = [list(range(dense.kv_heads)) for _ in range(L)]
    teacher = None
    shots_report = []
    plan = None
    budgets = shot_budgets(spec.recovery_tokens, spec.shots, recovery.seq_len if recovery else 1)
    if spec.recovery_tokens and (recovery is None or training_windows is None or load_teacher is None):
        raise InvalidArgument("transact recovery_tokens needs recovery settings, training windows and a teacher")
    try:
        for t in range(spec.shots):
            notify("score", t, spec.shots)
            scores = transitional_scores(model, *calibration, device, batch_size, should_cancel)
            if plan is None:
                plan = plan_for_ratio(model.config, scores, ratio, cap, allowed)
                steps = shot_widths(dense, first["intermediate_size"], plan, spec.shots)
            attention, width = steps[t]
            notify("prune", t, spec.shots)
            for i, layer_scores in enumerate(scores):
                if should_cancel is not None and should_cancel():
                    raise Cancelled(f"cancelled in shot {t + 1}, layer {i}")
                shape = get_shapes(model.config)[i]
                current_kv = shape["num_key_value_heads"]
                kv_keep, q_keep = select_heads(head_scores(layer_scores.heads), current_kv, attention)
                mlp_keep = layer_scores.mlp.topk(width).indices.sort().values
                prune_layer(model, i, kv_keep, q_keep, mlp_keep)
                q_orig[i] = [q_orig[i][h] for h in q_keep]
                kv_orig[i] = [kv_orig[i][g] for g in kv_keep]
            notify("prune", t + 1, spec.shots)  # shots pruned of K
            shot = {"shot": t + 1, "kv_heads": attention.kv_heads, "heads": attention.heads, "mlp_width": width}
            if budgets[t] > 0:
                shot_spec = dataclasses.replace(
                    recovery,
                    tokens=budgets[t],
                    lr=recovery.resolved_lr() * 2 * (t + 1) / spec.shots,
                    seed=recovery.seed + 100 * (t + 1),  # other windows than the final recovery's
                )
                teacher = teacher if teacher is not None else load_teacher()
                shot["recovery"] = recover(
                    model,
                    teacher,
                    *training_windows(shot_spec),
                    shot_spec,
                    device,
                    layer_boundaries(L),
                    progress=lambda done, total, loss: (metric("loss", loss), notify("recover", done, total)),
                    should_cancel=should_cancel,
                    show_progress=show_progress,
                ) | {"lr": shot_spec.lr}
            shots_report.append(shot)
    finally:
        del teacher
    return {
        "plan": plan.to_dict(),
        "shots": shots_report,
        "recovery_tokens": sum(s.get("recovery", {}).get("tokens", 0) for s in shots_report),
        "kept_heads": q_orig,  # per layer: the source's query heads that remain, in their new order
        "kept_kv_heads": kv_orig,
    }
