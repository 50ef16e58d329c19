"""The README's main command works: the embedded default runs a real job end to end (small settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# What a user's shell has: none of the Hub settings (endpoint, token, cache) that conftest exports for
# the other tests, so the demo must bring its own.
USER_ENV = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}


def test_embedded_demo_runs_a_job_end_to_end(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.demo",
            "--work",
            str(tmp_path / "demo"),
            "--samples",
            "4",
            "--seq-len",
            "64",
            "--eval-max-tokens",
            "512",
        ],
        cwd=ROOT,
        env=USER_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert '"status": "succeeded"' in run.stdout
    models = list((tmp_path / "demo" / "models").iterdir())
    assert len(models) == 1
    files = {p.name for p in models[0].iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "compression.json", "modeling_slim.py"} <= files
