"""Recovery: distil the dense source model (teacher) into the compressed one (student) after compression.

Why: one-shot pruning past ~25 % loses much of a model's quality, and every strong result there trains a
little afterwards (FlattenGPT's RFT, Minitron's distillation, TransAct's recovery). Distillation needs no
labels and keeps the student close to what the source model actually did. Any method's output can use it:
the student is trained in place and its shape never changes (LoRA adapters are merged back).

Loss per next-token position: T² · KL(p_teacher(T) ‖ p_student(T)) at temperature T, plus optionally
`hidden_weight` × the normalised MSE ‖h_s − h_t‖² / ‖h_t‖² between hidden states at layer boundaries whose
widths match: every layer for width methods (the residual width is kept), each merged group's output
against its last source layer for depth methods (`boundaries`).

Memory: teacher logits are computed on the fly for each batch (never cached on disk): both models plus one
batch's activations, with gradient checkpointing on the student. Full-parameter mode trains float32 master
weights with AdamW (16 bytes per student parameter) and stores the result back in the model's dtype; LoRA
mode trains only float32 adapters over the frozen, stored-dtype weights (the way to fit a 7B-shaped model
next to its teacher on one 80 GB GPU: measured 26 GiB peak at 4 × 1024 tokens per step, against 103 GiB for
full mode; bench/gpu_recovery_7b.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from slimkit.calibration import CalibrationSpec, build_calibration
from slimkit.errors import Cancelled, InvalidArgument
from slimkit.evaluate import cast_parameters, perplexity
from slimkit.lora import add_adapters, merge_adapters

MAX_TOKENS = 1 << 31
WINDOWS_PER_DRAW = 4096  # the calibration builder's cap: larger budgets draw several seeds
RecoveryProgress = Callable[[int, int, float], None]  # (tokens done, token budget, last loss)


@dataclass
class RecoverySpec:
    tokens: int = 65536  # training-token budget (rounded up to whole windows)
    text: str | None = None  # what to train on; None: the calibration text. Anything the calibration accepts
    seq_len: int = 512
    batch_size: int = 4  # windows per optimizer step
    lr: float | None = None  # peak learning rate; default 5e-5 (full) or 1e-3 (lora), once `auto` has chosen
    schedule: str = "cosine"  # "cosine" (to 10 % of the peak) or "constant", after a linear warm-up
    warmup: float = 0.05  # fraction of the steps
    temperature: float = 1.0
    hidden_weight: float = 0.0  # weight of the hidden-state matching term (0: logits only)
    mode: str = "auto"  # "full" (every student parameter), "lora", or "auto": full where it fits (`choose_mode`)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 1  # window sampling; the calibration uses seed 0, so the windows differ
    gradient_checkpointing: bool = True

    def validate(self) -> None:
        if not 1 <= self.tokens <= MAX_TOKENS:
            raise InvalidArgument(f"recovery tokens must be in [1, {MAX_TOKENS}], got {self.tokens}")
        if not 8 <= self.seq_len <= 32768:
            raise InvalidArgument(f"recovery seq_len must be in [8, 32768], got {self.seq_len}")
        if not 1 <= self.batch_size <= 1024:
            raise InvalidArgument(f"recovery batch_size must be in [1, 1024], got {self.batch_size}")
        if self.lr is not None and not 0 < self.lr <= 1:
            raise InvalidArgument(f"recovery lr must be in (0, 1], got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise InvalidArgument(f"recovery schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            raise InvalidArgument(f"recovery warmup must be in [0, 1), got {self.warmup}")
        if not 0 < self.temperature <= 100:
            raise InvalidArgument(f"recovery temperature must be in (0, 100], got {self.temperature}")
        if self.hidden_weight < 0:
            raise InvalidArgument(f"recovery hidden_weight must be >= 0, got {self.hidden_weight}")
        if self.mode not in ("auto", "full", "lora"):
            raise InvalidArgument(f"recovery mode must be 'auto', 'full' or 'lora', got {self.mode!r}")
        if not 1 <= self.lora_rank <= 1024 or self.lora_alpha <= 0:
            raise InvalidArgument("recovery lora_rank must be in [1, 1024] and lora_alpha > 0")

    @property
    def windows(self) -> int:
        return math.ceil(self.tokens / self.seq_len)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.mode == "lora" else 5e-5)

    def recipe(self, calibration_text: str) -> dict:
        lr = self.lr if self.mode == "auto" else self.resolved_lr()  # auto: known once the mode is chosen
        return asdict(self) | {"text": self.text or calibration_text, "lr": lr}


# `auto` trains every parameter when fp32 weights, gradients and AdamW's two moments (16 B per student
# parameter) plus the resident teacher take at most this share of the GPU: the rest is for activations. The
# 7B-shaped measurement (bench/gpu_recovery_7b.py) peaked 23 % above that estimate (103 GiB for 84 GiB).
FULL_FIT = 0.75


def choose_mode(
    student: torch.nn.Module, teacher: torch.nn.Module, device: torch.device, total_bytes: int | None = None
) -> tuple[str, str]:
    """(mode, why) for `mode="auto"`: full-parameter where it fits the device, LoRA otherwise.

    On a CPU the host's memory holds both (full). `total_bytes`: the device's memory (default: asked of CUDA).
    """
    if device.type != "cuda":
        return "full", "training on the CPU"
    total = total_bytes if total_bytes is not None else torch.cuda.get_device_properties(device).total_memory
    need = 16 * sum(p.numel() for p in student.parameters())
    need += sum(p.numel() * p.element_size() for p in teacher.parameters())
    gib = f"~{need / 2**30:.0f} GiB of the device's {total / 2**30:.0f} GiB"
    if need <= FULL_FIT * total:
        return "full", f"weights, gradients, optimizer state and teacher need {gib}"
    return "lora", f"full-parameter training would need {gib} before activations"


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · mean over valid positions of KL(teacher ‖ student) on (B, T, V) logits, in float32."""
    s = F.log_softmax(student[valid].float() / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher[valid].float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def hidden_loss(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    boundaries: list[tuple[int, int]],
    valid: torch.Tensor,
) -> torch.Tensor:
    """Mean over boundaries (student index, teacher index) of ‖h_s − h_t‖² / ‖h_t‖² on valid tokens."""
    terms = []
    for i, j in boundaries:
        hs, ht = student[i][valid].float(), teacher[j][valid].float()
        terms.append((hs - ht).pow(2).sum() / ht.pow(2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def lr_factor(step: int, steps: int, spec: RecoverySpec) -> float:
    """Linear warm-up, then constant or cosine decay to 10 % of the peak."""
    warm = int(spec.warmup * steps)
    if step < warm:
        return (step + 1) / warm
    if spec.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(steps - warm, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def recover(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,  # (n, T) training windows
    attention_mask: torch.Tensor,  # (n, T)
    spec: RecoverySpec,
    device: torch.device,
    boundaries: list[tuple[int, int]] | None = None,
    progress: RecoveryProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> dict:
    """Train `student` in place towards `teacher` on the windows; returns what was done (tokens, time, losses).

    Both models come back on their original device in their original dtype, in eval mode. Cancellation is
    checked before every step (`Cancelled`: the student is left half-trained; the caller discards it).
    `spec.mode == "auto"` is decided here (`choose_mode`); the report says which mode ran and why.
    """
    why = None
    if spec.mode == "auto":
        mode, why = choose_mode(student, teacher, device)
        spec = replace(spec, mode=mode)
    store_dtype = student.model.embed_tokens.weight.dtype
    student_device = student.model.embed_tokens.weight.device
    teacher_place = (teacher.model.embed_tokens.weight.device, teacher.model.embed_tokens.weight.dtype)
    compute = torch.float32 if device.type == "cpu" else teacher_place[1]  # CPU half kernels are slow
    teacher.to(device).eval()  # device only: `.to(dtype)` would round the float32 RoPE tables
    cast_parameters(teacher, compute)
    student.to(device)
    if spec.mode == "full":
        cast_parameters(student, torch.float32)  # master weights: small updates must not vanish in bf16
        params = list(student.parameters())
        for p in params:
            p.requires_grad_(True)
    else:
        cast_parameters(student, compute)
        params = add_adapters(student, spec.lora_rank, spec.lora_alpha)
    if spec.gradient_checkpointing:
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if spec.mode == "lora":
            student.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    student.train()
    optimizer = torch.optim.AdamW(params, lr=spec.resolved_lr(), weight_decay=spec.weight_decay, betas=(0.9, 0.95))
    steps = math.ceil(input_ids.shape[0] / spec.batch_size)
    use_hidden = spec.hidden_weight > 0 and bool(boundaries)
    losses: list[float] = []
    tokens_done, start = 0, time.perf_counter()
    bar = tqdm(total=spec.windows * spec.seq_len, desc="recover", unit="tok", disable=not show_progress)
    try:
        for step in range(steps):
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled during recovery")
            for group in optimizer.param_groups:
                group["lr"] = spec.resolved_lr() * lr_factor(step, steps, spec)
            rows = slice(step * spec.batch_size, (step + 1) * spec.batch_size)
            ids, mask = input_ids[rows].to(device), attention_mask[rows].to(device)
            valid = mask.bool()
            with torch.no_grad():
                t_out = teacher(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=use_hidden)
            s_out = student(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=use_hidden)
            loss = distillation_loss(s_out.logits, t_out.logits, valid, spec.temperature)
            if use_hidden:
                loss = loss + spec.hidden_weight * hidden_loss(
                    s_out.hidden_states, t_out.hidden_states, boundaries, valid
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens_done += int(mask.sum())
            bar.update(int(mask.sum()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if progress is not None:
                progress(tokens_done, spec.windows * spec.seq_len, losses[-1])
    finally:
        bar.close()
        del optimizer
        if spec.gradient_checkpointing:
            student.activation_checkpointing_disable()
        if spec.mode == "lora":
            merge_adapters(student)
        student.eval().to(student_device)
        cast_parameters(student, store_dtype)
        for p in student.parameters():
            p.requires_grad_(False)
            p.grad = None
        teacher.to(teacher_place[0])
        cast_parameters(teacher, teacher_place[1])
    return {
        "tokens": tokens_done,
        "steps": len(losses),
        "mode": spec.mode,
        "mode_reason": why,
        "wall_s": round(time.perf_counter() - start, 3),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_min": min(losses) if losses else None,
    }


def layer_boundaries(num_layers: int, depth_groups: list[list[int]] | None = None) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices that match: every layer output for width methods; for depth
    methods, merged group j's output against the output of its last source layer."""
    if depth_groups:
        return [(j + 1, group[-1] + 1) for j, group in enumerate(depth_groups)]
    return [(i, i) for i in range(1, num_layers + 1)]


def training_windows(
    tokenizer: PreTrainedTokenizerBase, spec: RecoverySpec, calibration_text: str, token: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of `spec.windows` random windows of the recovery text, drawn in chunks of seeds."""
    ids, masks = [], []
    for k, start in enumerate(range(0, spec.windows, WINDOWS_PER_DRAW)):
        n = min(WINDOWS_PER_DRAW, spec.windows - start)
        text = spec.text or calibration_text
        batch = build_calibration(tokenizer, CalibrationSpec(text, n, spec.seq_len, spec.seed + 1000 * k), token)
        ids.append(batch.input_ids)
        masks.append(batch.attention_mask)
    return torch.cat(ids), torch.cat(masks)


def recovery_stage(
    model: torch.nn.Module,
    load_teacher: Callable[[], torch.nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    eval_windows: torch.Tensor,
    spec: RecoverySpec,
    device: torch.device,
    eval_batch_size: int,
    perplexity_before: float,
    boundaries: list[tuple[int, int]] | None = None,
    progress: RecoveryProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> dict:
    """Distil, evaluate on the held-out windows, and keep the result only if it is better.

    `perplexity_before` is the compressed model's held-out perplexity; if recovery makes it worse, the
    pre-recovery weights are put back and the record says so (`kept: false`).
    """
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    teacher = load_teacher()
    try:
        report = recover(model, teacher, *train, spec, device, boundaries, progress, should_cancel, show_progress)
    finally:
        del teacher
    after = perplexity(model, eval_windows, device, eval_batch_size)
    kept = after < perplexity_before
    if not kept:
        model.load_state_dict(snapshot)
    return report | {"perplexity_before": perplexity_before, "perplexity_after": after, "kept": kept}
