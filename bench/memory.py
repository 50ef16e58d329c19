"""Peak-memory bookkeeping for one process: RSS high-water overall and per stage of `slimkit.compress`.

`ru_maxrss` is exact but covers the whole process life, so the evaluation forward passes (whose logits
dominate memory on a 49k-token vocabulary) would hide the compression peak. `StageMemory` is used as the
`progress` callback of `compress`: a background thread samples the resident set size every few
milliseconds and keeps the maximum per stage; on CUDA the allocator's exact peak is read and reset at every
stage change. Stages are the ones `compress` announces; it announces "compress" only after its first
layer is done, so layer 0's work counts under the stage before (evaluate_dense, or calibrate without
evaluation). Layers of one model have the same shape, so layers 1..n-1 still show the compression peak.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

import torch

MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def max_rss() -> int:
    """The process's RSS high-water mark in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class StageMemory:
    """A `compress` progress callback that records peak RSS (and CUDA memory) per stage, in MiB."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.stage = "start"
        self.rss: dict[str, float] = {}
        self.cuda: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)

    def __enter__(self) -> StageMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._switch("end")

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self._switch(stage)

    def _record(self) -> None:
        rss = current_rss() / MIB
        with self._lock:
            self.rss[self.stage] = max(self.rss.get(self.stage, 0.0), rss)

    def _switch(self, stage: str) -> None:
        self._record()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / MIB
            self.cuda[self.stage] = max(self.cuda.get(self.stage, 0.0), peak)
            torch.cuda.reset_peak_memory_stats(self.device)
        with self._lock:
            self.stage = stage
        self._record()

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def peak(self, stages: set[str], cuda: bool = False) -> float:
        """The largest peak over the given stages (MiB)."""
        values = self.cuda if cuda else self.rss
        return max((v for k, v in values.items() if k in stages), default=0.0)
