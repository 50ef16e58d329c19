"""Stage-by-stage progress for the engine CLI, on stderr: every stage's name as it starts and its wall time
when it ends, and within counted stages (layers, recovery tokens) the position and an ETA from the rate so far.

On a terminal the position line is rewritten in place; in a log (not a tty) it is printed at most every 10 %,
so a CI log shows progress without thousands of lines. `--quiet` replaces all of it with nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

STAGE_NAMES = {
    "load": "load the model",
    "calibrate": "calibration data",
    "evaluate_dense": "evaluate the dense model",
    "similarity": "layer similarity",
    "estimate": "estimate per-layer ratios",
    "compress": "compress",
    "score": "score channels",
    "prune": "prune",
    "evaluate": "evaluate the compressed model",
    "recover": "recovery training",
    "save": "save",
    "measure_speed": "measure the speed-up",
    "verify": "verify the reload",
}


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


class StageProgress:
    """A `progress(stage, done, total)` callback for `slimkit.compress`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr  # looked up now: tests and callers may have replaced it
        self.tty = self.stream.isatty()
        self.stage: str | None = None
        self.started = self.last_print = 0.0
        self.last_fraction = -1.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.finish()
            self.stage, self.started, self.last_fraction = stage, now, -1.0
            self._write(f"{STAGE_NAMES.get(stage, stage)} …", newline=not self.tty)
        if total <= 1 or done <= 0:
            return
        fraction = done / total
        if not self.tty and fraction - self.last_fraction < 0.1 and done < total:
            return
        self.last_fraction = fraction
        elapsed = now - self.started
        eta = elapsed / fraction * (1 - fraction)
        unit = "tokens" if stage == "recover" else "layers"
        line = f"{STAGE_NAMES.get(stage, stage)}: {done:,}/{total:,} {unit}, {_duration(elapsed)}"
        self._write(line + (f", ETA {_duration(eta)}" if done < total else ""), newline=not self.tty)

    def finish(self) -> None:
        """End the current stage's line with its wall time (called at each stage change and at the end)."""
        if self.stage is not None:
            elapsed = time.monotonic() - self.started
            self._write(f"{STAGE_NAMES.get(self.stage, self.stage)}: done in {_duration(elapsed)}", newline=True)
            self.stage = None

    def _write(self, text: str, newline: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
