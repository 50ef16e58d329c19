"""Shared helpers for the benchmark scripts: run metadata (command, date, versions, device) and output files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line(module: str) -> str:
    """The command that reproduces this run, as typed from the repository root."""
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD of the checkout the benchmark ran from, with `+dirty` when it had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.strip() else "")


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware, recorded next to every result."""
    import torch
    import transformers

    import slimkit

    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "slimkit": slimkit.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "git_commit": git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def header_lines(title: str, command: str, env: dict[str, Any]) -> list[str]:
    """The markdown preamble: title, command and environment."""
    hw = f"{env['cpu']}, {env['cpu_count']} CPUs ({env['torch_threads']} torch threads)"
    if "gpu" in env:
        hw += f", GPU {env['gpu']}"
    return [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Date: {env['date']}  ",
        f"Versions: torch {env['torch']}, transformers {env['transformers']}, slimkit {env['slimkit']}, "
        f"Python {env['python']}  ",
        f"Device: {env['device']}; {hw}",
        "",
    ]


def write_results(prefix: str, data: dict[str, Any], markdown: str, results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Write `<prefix>.json` and `<prefix>.md` into the results folder; returns both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = [results_dir / f"{prefix}.json", results_dir / f"{prefix}.md"]
    paths[0].write_text(json.dumps(data, indent=2) + "\n")
    paths[1].write_text(markdown.rstrip() + "\n")
    return paths
