"""Reload check: the saved checkpoint must load in a fresh process and reproduce the compressed model.

Why a fresh process: the worker process has the engine's classes imported and registered, and transformers
caches remote code per process, so an in-process reload can succeed where a user's `from_pretrained` fails
(a missing modeling file, an `auto_map` pointing at a class that only exists in our process). The child
loads the folder exactly as a user would — `trust_remote_code` only for the "slim" format — compares its
logits with reference logits the worker computed from the in-memory compressed model, and runs a short
`generate()`.

    python -m worker.reload_check DIR REF.safetensors [DEVICE]   # exit 0: ok, 3: mismatch, else: no load

The last stdout line is a JSON report. Both sides run on the same device (the GPU when the worker has one:
a multi-billion-parameter forward pass on CPU in half precision would take minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slimkit.errors import ReloadMismatch

MISMATCH_EXIT = 3
TOLERANCE = 1e-3  # of the logits' scale (at least 1): the same bar as the engine's in-process check
# Credentials the child has no use for: it loads a local folder, and for the slim format runs its code.
SECRET_ENV = {
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "SLIMKIT_HUB_TOKEN",
    "SLIMKIT_HUB_TOKEN_FILE",
    "SLIMKIT_TOKEN_PEPPER",
    "SLIMKIT_DATABASE_URL",
    "SLIMKIT_BROKER_URL",
}
PROBE_TEXT = (
    "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure "
    "in Paris. Its base is square, measuring 125 metres on each side. During its construction, it surpassed "
    "the Washington Monument to become the tallest man-made structure in the world."
)


def probe_ids(folder: Path, rows: int = 2, tokens: int = 32) -> torch.Tensor:
    """Real text through the saved tokenizer (realistic activations), `rows` shifted windows of `tokens`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)  # the tokenizer needs no code
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][0]
    while ids.numel() < tokens + rows:
        ids = torch.cat([ids, ids])
    return torch.stack([ids[r : r + tokens] for r in range(rows)])


def check_device(model: torch.nn.Module | None = None) -> str:
    """The GPU when there is one and the whole model fits in its free memory (with room for activations).

    The engine compresses layer by layer, so a model it handled need not fit on the GPU whole; then both
    sides of the check run on CPU (slower, but the same computation on both sides).
    """
    if not torch.cuda.is_available():
        return "cpu"
    if model is None:
        return "cuda"
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    free, _ = torch.cuda.mem_get_info()
    return "cuda" if size * 1.25 < free else "cpu"


@torch.no_grad()
def save_reference(model: torch.nn.Module, folder: Path, path: Path, device: str = "cpu") -> None:
    """Reference input ids and logits of the in-memory compressed model, for the fresh process to match."""
    ids = probe_ids(folder)
    was = next(model.parameters()).device
    model.eval().to(device)
    try:
        logits = model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()
    finally:
        model.to(was)
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()}, str(path))


def check_in_fresh_process(folder: Path, reference: Path, timeout_s: float, device: str = "cpu") -> dict[str, Any]:
    """Run the check in a new interpreter; its report, or ReloadMismatch (mismatch, or it did not load)."""
    root = str(Path(__file__).resolve().parents[1])  # so `-m worker.reload_check` resolves from a source tree
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}  # it runs the checkpoint's code
    env |= {
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        "HF_HUB_OFFLINE": "1",  # a local folder: no network, and certainly no remote code from elsewhere
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "worker.reload_check", str(folder), str(reference), device],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"the reload check did not finish within {timeout_s:.0f} s") from err
    report = _last_json(proc.stdout)
    if proc.returncode == 0 and report is not None:
        return report
    if proc.returncode == MISMATCH_EXIT and report is not None:
        raise ReloadMismatch(report["message"])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    raise ReloadMismatch(f"the saved checkpoint does not load in a fresh process (exit {proc.returncode}): {tail}")


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


@torch.no_grad()
def run_check(folder: Path, reference: Path, device: str = "cpu") -> tuple[bool, dict[str, Any]]:
    """Load `folder` as a user would and compare with `reference`; (ok, report)."""
    from transformers import AutoModelForCausalLM

    record = json.loads((folder / "compression.json").read_text())
    fmt = record.get("format", "slim")
    ref = load_file(str(reference))
    ids, expected = ref["input_ids"], ref["logits"]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=fmt == "slim").eval().to(device)
    ids = ids.to(device)
    got = model(input_ids=ids, use_cache=False).logits.float().cpu()
    if got.shape != expected.shape:
        return False, {"message": f"reloaded logits have shape {tuple(got.shape)}, expected {tuple(expected.shape)}"}
    diff = float((got - expected).abs().max())
    scale = max(float(expected.abs().max()), 1.0)
    report: dict[str, Any] = {"format": fmt, "max_abs_diff": diff, "tolerance": TOLERANCE * scale}
    if not diff <= TOLERANCE * scale:
        report["message"] = (
            f"the checkpoint reloaded in a fresh process does not reproduce the compressed model: "
            f"max |Δlogit| = {diff:.3g} (tolerance {TOLERANCE * scale:.3g})"
        )
        return False, report
    prompt = ids[:1, :8]
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    report["generated_tokens"] = int(out.shape[1] - prompt.shape[1])
    if report["generated_tokens"] < 1:
        report["message"] = "the reloaded model generated no tokens"
        return False, report
    return True, report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m worker.reload_check DIR REF.safetensors [DEVICE]", file=sys.stderr)
        return 2
    ok, report = run_check(Path(args[0]), Path(args[1]), *args[2:])
    print(json.dumps(report))
    return 0 if ok else MISMATCH_EXIT


if __name__ == "__main__":
    sys.exit(main())
