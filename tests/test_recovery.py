"""Recovery by distillation (issue 14 §2), on tiny models: it must move the student towards the teacher on
held-out windows, keep the student's shape, dtype and format, and stop cleanly when cancelled."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimkit import CalibrationSpec, CompressionRequest, EvalSpec, compress
from slimkit.errors import Cancelled, InvalidArgument
from slimkit.evaluate import eval_windows, perplexity
from slimkit.export import load_compressed
from slimkit.layerwise import LayerTarget, compress_model
from slimkit.loading import load_source
from slimkit.lora import LoRALinear
from slimkit.methods import method_for
from slimkit.recovery import RecoverySpec, distillation_loss, hidden_loss, lr_factor, recover
from slimkit.tokenizer_files import load_tokenizer

VOCAB = 8192
CPU = torch.device("cpu")


def windows(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def pair(path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(student: compressed 40 %, teacher: the dense source), as the pipeline has them."""
    student = load_source(str(path)).model
    ids = windows(8, 64, 0)
    targets = [LayerTarget(0.4, 0.4)] * student.config.num_hidden_layers
    compress_model(student, ids, torch.ones_like(ids), method_for("intraslice"), targets, CPU, show_progress=False)
    return student, load_source(str(path)).model


@torch.no_grad()
def held_out_kl(student: torch.nn.Module, teacher: torch.nn.Module) -> float:
    ids = windows(4, 64, 99)
    valid = torch.ones_like(ids, dtype=torch.bool)
    s, t = student.float()(ids).logits, teacher.float()(ids).logits
    return float(distillation_loss(s, t, valid, 1.0))


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_recovery_moves_the_student_towards_the_teacher(tiny_llama_gqa: Path, mode: str) -> None:
    student, teacher = pair(tiny_llama_gqa)
    dtype, before_shapes = student.dtype, shapes(student)
    kl_before = held_out_kl(student, teacher)
    student.to(dtype)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    ids = windows(64, 64, 1)
    spec = RecoverySpec(tokens=ids.numel(), seq_len=64, batch_size=4, mode=mode, lr=3e-4 if mode == "full" else 1e-3)
    seen: list[tuple[int, int, float]] = []
    report = recover(student, teacher, ids, torch.ones_like(ids), spec, CPU, progress=lambda *a: seen.append(a))
    assert report["tokens"] == ids.numel() and report["steps"] == 16
    assert [s[0] for s in seen] == [256 * (i + 1) for i in range(16)] and seen[-1][1] == ids.numel()
    assert shapes(student) == before_shapes  # LoRA merged back: same tensors, same shapes
    assert not any(isinstance(m, LoRALinear) for m in student.modules())
    assert student.dtype == dtype and not student.training
    assert not any(p.requires_grad for p in student.parameters())
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    assert student.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers never rounded
    assert held_out_kl(student, teacher) < 0.9 * kl_before


def test_hidden_state_matching_is_used_and_trains(tiny_llama_gqa: Path) -> None:
    student, teacher = pair(tiny_llama_gqa)
    ids = windows(8, 64, 2)
    boundaries = [(i, i) for i in range(1, student.config.num_hidden_layers + 1)]
    with torch.no_grad():
        s = student.float()(ids, output_hidden_states=True).hidden_states
        t = teacher.float()(ids, output_hidden_states=True).hidden_states
    valid = torch.ones_like(ids, dtype=torch.bool)
    assert float(hidden_loss(s, t, boundaries, valid)) > 0
    assert float(hidden_loss(t, t, boundaries, valid)) == 0
    spec = RecoverySpec(tokens=ids.numel(), seq_len=64, batch_size=4, hidden_weight=1.0, lr=1e-3)
    plain = RecoverySpec(tokens=ids.numel(), seq_len=64, batch_size=4, lr=1e-3)
    other, _ = pair(tiny_llama_gqa)
    with_hidden = recover(student, teacher, ids, torch.ones_like(ids), spec, CPU, boundaries=boundaries)
    logits_only = recover(other, teacher, ids, torch.ones_like(ids), plain, CPU, boundaries=boundaries)
    assert with_hidden["loss_first"] > logits_only["loss_first"]  # the hidden term is part of the loss


def test_distillation_loss_is_a_scaled_kl() -> None:
    logits = torch.randn(2, 5, 11)
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert float(distillation_loss(logits, logits, valid, 2.0)) == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 5, 11)
    kl = float(distillation_loss(other, logits, valid, 1.0))
    p, q = logits.softmax(-1), other.softmax(-1)
    assert kl == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-5)
    valid[1] = False  # padded rows do not count
    assert float(distillation_loss(other, logits, valid, 1.0)) == pytest.approx(
        float((p[0] * (p[0].log() - q[0].log())).sum(-1).mean()), rel=1e-5
    )


def test_schedule_warms_up_then_decays_to_a_tenth() -> None:
    spec = RecoverySpec(warmup=0.1)
    factors = [lr_factor(s, 100, spec) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert {lr_factor(s, 100, RecoverySpec(warmup=0.0, schedule="constant")) for s in range(100)} == {1.0}


def test_cancel_stops_between_steps_and_leaves_no_adapters(tiny_llama_gqa: Path) -> None:
    student, teacher = pair(tiny_llama_gqa)
    ids = windows(16, 64, 3)
    calls = iter([False, False, True])
    spec = RecoverySpec(tokens=ids.numel(), seq_len=64, batch_size=4, mode="lora")
    seen: list[int] = []
    with pytest.raises(Cancelled):
        recover(
            student,
            teacher,
            ids,
            torch.ones_like(ids),
            spec,
            CPU,
            progress=lambda done, total, loss: seen.append(done),
            should_cancel=lambda: next(calls),
        )
    assert seen == [256, 512]
    assert not any(isinstance(m, LoRALinear) for m in student.modules()) and not student.training


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens", 0),
        ("seq_len", 4),
        ("batch_size", 0),
        ("lr", 0.0),
        ("schedule", "linear"),
        ("warmup", 1.0),
        ("temperature", 0.0),
        ("hidden_weight", -1.0),
        ("mode", "qlora"),
        ("lora_rank", 0),
    ],
)
def test_bad_specs_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=field.split("_")[0]):
        RecoverySpec(**{field: value}).validate()


def test_compress_with_recovery_records_and_keeps_only_an_improvement(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    request = CompressionRequest(
        model=str(tiny_llama_gqa),
        ratio=0.4,
        calibration=CalibrationSpec("mixed", samples=8, seq_len=64),
        evaluation=EvalSpec("mixed", seq_len=64, max_tokens=1024, dense=False),
        recovery=RecoverySpec(tokens=4096, seq_len=64, batch_size=4, lr=3e-4, seed=5),  # trains on "mixed"
    )
    with pytest.raises(InvalidArgument, match="evaluation text"):
        compress(request, tmp_path / "refused", show_progress=False)  # would train on the held-out text
    assert not (tmp_path / "refused").exists()
    request.evaluation = EvalSpec("wikitext2_test", seq_len=64, max_tokens=1024, dense=False)
    stages: list[str] = []
    losses: list[float] = []
    result = compress(
        request,
        tmp_path / "out",
        progress=lambda stage, done, total: stages.append(stage),
        metric=lambda name, value: losses.append(value),
        show_progress=False,
    )
    rec, metrics = result.record["recovery"], result.record["metrics"]
    assert rec["mode"] == result.record["recipe"]["recovery"]["mode"] == "full"  # `auto` on a CPU, as recorded
    assert rec["mode_reason"] == "training on the CPU" and result.record["recipe"]["recovery"]["lr"] == 3e-4
    assert "recover" in stages and len(losses) == rec["steps"] == 16 and rec["tokens"] == 4096
    assert result.record["recipe"]["recovery"]["tokens"] == 4096
    assert rec["perplexity_before"] == metrics["perplexity_compressed"]
    if rec["kept"]:
        assert metrics["perplexity_after"] == rec["perplexity_after"] < rec["perplexity_before"]
    else:
        assert metrics["perplexity_after"] == rec["perplexity_before"]
    reloaded = load_source(str(tiny_llama_gqa))  # the output still loads, with the compressed shape
    assert result.record["params_after"]["total"] < sum(p.numel() for p in reloaded.model.parameters())


def test_recovery_that_hurts_is_discarded(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    """A learning rate far too high ruins the student: the pipeline must put the pre-recovery weights back."""
    request = CompressionRequest(
        model=str(tiny_llama_gqa),
        ratio=0.4,
        calibration=CalibrationSpec("wikitext2_valid", samples=8, seq_len=64),
        evaluation=EvalSpec("wikitext2_test", seq_len=64, max_tokens=1024, dense=False),
        recovery=RecoverySpec(tokens=1024, seq_len=64, batch_size=4, lr=0.5, warmup=0.0, schedule="constant"),
    )
    result = compress(request, tmp_path / "out", show_progress=False)
    rec = result.record["recovery"]
    assert rec["kept"] is False and rec["perplexity_after"] > rec["perplexity_before"]
    assert result.record["metrics"]["perplexity_after"] == rec["perplexity_before"]
    source = load_source(str(tiny_llama_gqa))  # the saved weights are the pre-recovery ones
    windows = eval_windows(load_tokenizer(source.path, source.config), request.evaluation)
    again = perplexity(load_compressed(tmp_path / "out"), windows, CPU)
    assert again == pytest.approx(rec["perplexity_before"], rel=1e-3)


def test_cli_recovery_flags(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(tiny_llama_gqa), "--out", str(out), "--ratio", "0.4", "--samples", "8", "--seq-len", "64"]
    args += ["--eval-seq-len", "64", "--eval-max-tokens", "512", "--no-verify"]
    args += ["--recover-tokens", "512", "--recover-seq-len", "64", "--recover-mode", "lora", "--recover-lr", "1e-3"]
    run = subprocess.run(
        [sys.executable, "-m", "slimkit.cli", "compress", *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr
    assert "recovery     512 tokens" in run.stdout
    assert "recover" in run.stderr  # the progress bar, with the loss
    record = json.loads((out / "compression.json").read_text())
    assert record["recipe"]["recovery"]["mode"] == "lora" and record["recovery"]["tokens"] == 512


def test_layer_boundaries_pair_width_and_depth_outputs() -> None:
    from slimkit.recovery import layer_boundaries

    assert layer_boundaries(3) == [(1, 1), (2, 2), (3, 3)]
    assert layer_boundaries(3, [[0], [1, 2], [3, 4, 5]]) == [(1, 1), (2, 3), (3, 6)]


def test_the_gpu_recovery_benchmark_runs_end_to_end_on_a_tiny_shape(tmp_path: Path) -> None:
    """`bench.gpu_recovery_7b` is run on a lent GPU in one go: its CPU path keeps it from rotting meanwhile."""
    from bench import gpu_recovery_7b

    out = tmp_path / "rows.jsonl"
    argv = ["--shape", "tiny", "--device", "cpu", "--tokens", "512", "--seq-len", "128", "--samples", "8"]
    assert gpu_recovery_7b.main([*argv, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["recovery_tokens"] == 512 and row["recovery_steps"] == 1
    assert 0.29 < row["ratio_achieved"] < 0.31
    assert row["peak_gib"]["recover"] > 0 and row["peak_kind"] == "process RSS"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["llama-tiny-random"]  # output removed


def test_auto_mode_trains_every_weight_where_it_fits_and_lora_where_it_does_not() -> None:
    """A 7B teacher and its 30 % student (built on the meta device: shapes only): full-parameter on a
    141 GB H200 (measured there: 103 GiB peak), LoRA on an 80 GB card; always full on a CPU."""
    import transformers as T

    from slimkit.recovery import choose_mode

    def llama(intermediate: int) -> torch.nn.Module:
        config = T.LlamaConfig(hidden_size=4096, intermediate_size=intermediate, num_hidden_layers=32)
        with torch.device("meta"):
            return T.LlamaForCausalLM(config).to(torch.bfloat16)

    teacher, student = llama(11008), llama(6000)  # 6.74 B and 4.77 B parameters
    cuda = torch.device("cuda")
    assert choose_mode(student, teacher, cuda, total_bytes=143771 * 2**20)[0] == "full"  # H200
    mode, why = choose_mode(student, teacher, cuda, total_bytes=81559 * 2**20)  # H100 80 GB
    assert mode == "lora" and "would need ~84 GiB" in why
    assert choose_mode(student, teacher, CPU) == ("full", "training on the CPU")
