"""The dashboard's plots from job rows: which jobs become points, and what each point says."""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace

from app.models import JobStatus
from app.ui import plots


def job(method: str, status: JobStatus, result: dict | None, target: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        id=uuid.uuid4(), method=method, status=status, result=result, request={"target": target or {}}
    )


def test_speed_plot_has_the_dense_reference_and_measured_speedups() -> None:
    base = {"params_before": {"total": 1_000_000}}
    jobs = [
        job(
            "intraslice",
            JobStatus.succeeded,
            base | {"params_after": {"total": 700_000}, "speedup": {"measured": 1.3, "target": 1.25, "device": "cpu"}},
        ),
        job(
            "flattengpt", JobStatus.succeeded, base | {"params_after": {"total": 800_000}, "speedup": None}
        ),  # no speed-up
        job("intraslice", JobStatus.failed, None),
    ]
    points = plots.speed_points(jobs)
    assert [(p.job_id is None, p.params, p.value) for p in points] == [(True, 1_000_000, 1.0), (False, 700_000, 1.3)]
    svg = plots.svg(points, "measured speed-up (×)", "speed-plot")
    found = re.findall(r'data-job="([^"]*)" data-method="([^"]*)" data-params="(\d+)" data-value="([\d.]+)"', svg)
    assert found == [("", "dense", "1000000", "1.0000"), (str(jobs[0].id), "intraslice", "700000", "1.3000")]
    assert "target 1.25× on cpu" in svg and plots.svg([], "x", "empty") == ""


def test_quality_plot_skips_unevaluated_and_unfinished_jobs() -> None:
    done = {
        "params_before": {"total": 10},
        "params_after": {"total": 7},
        "perplexity_before": 5.0,
        "perplexity_after": 6.5,
    }
    jobs = [
        job("transact", JobStatus.succeeded, done, {"ratio": 0.3}),
        job("intraslice", JobStatus.succeeded, done | {"perplexity_after": None}),
        job("intraslice", JobStatus.running, None),
    ]
    points = plots.quality_points(jobs)
    assert [(p.method, p.value) for p in points] == [("dense", 5.0), ("transact", 6.5)]
    assert '"ratio": 0.3' in points[1].label
