"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser), the API
served over HTTP. Sign in, follow a job live to its end (scripted stages for the screenshots, and a real job
run by a real Celery worker), read the plot, cancel from the UI, and fail to reach another owner's job. With
SLIMKIT_SCREENSHOTS=DIR the pages are saved there (the README's pictures).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import save_tiny
from tests.hub_fixtures import serve_api
from tests.test_api import BODY, auth, hub_models  # noqa: F401  (hub_models is a fixture)
from tests.test_dashboard import finished_job
from tests.test_job_events import run_like_a_worker
from tests.test_worker_e2e import FAST, sources, worker  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")


@pytest.fixture
def site(db, hub_models) -> Iterator[str]:  # noqa: F811
    with serve_api() as url:
        yield url


@pytest.fixture
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def shot(page: object, name: str) -> None:
    folder = os.environ.get("SLIMKIT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def signed_in(browser: object, site: str, token: str) -> object:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.goto(f"{site}/ui")
    assert page.url.endswith("/ui/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site}/ui")
    return page


def test_dashboard_in_a_real_browser(site: str, browser: object, make_token, local_hub, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from huggingface_hub import HfApi
    from playwright.sync_api import expect

    from app.db import session_factory
    from worker import watcher

    org = f"org{uuid.uuid4().hex[:8]}"

    from app.main import create_app

    api = TestClient(create_app())
    alice, bob = make_token("alice"), make_token("bob")
    done = [finished_job(api, auth(alice), r, ppl, n) for r, ppl, n in ((0.2, 12.5, 800_000), (0.3, 15.0, 700_000))]
    live = api.post("/jobs", json=BODY | {"output": {"push": False}}, headers=auth(alice)).json()["id"]
    page = signed_in(browser, site, alice)
    assert page.locator(f'tr[data-job="{live}"] .status').inner_text().startswith("queued")

    page.goto(f"{site}/ui/jobs/{live}")  # follow the job live: the page updates, then reloads at the end
    scripted = threading.Thread(target=run_like_a_worker, args=(live, 0.8))
    scripted.start()
    try:  # the page's CSP forbids eval, so waits go through locators
        expect(page.locator(".state .stage")).to_have_text("compress", timeout=30_000)
        shot(page, "job-running")
    finally:
        scripted.join()
    expect(page.locator(".state .status")).to_have_text("succeeded", timeout=30_000)
    assert page.locator("table.timeline td", has_text="download").count() == 1

    page.goto(f"{site}/ui")
    shot(page, "jobs")
    page.goto(f"{site}/ui/models/{BODY['model']}")
    plotted = page.eval_on_selector_all(
        "#quality-plot .point", "ps => ps.map(p => [p.dataset.job, Number(p.dataset.params), Number(p.dataset.value)])"
    )
    assert sorted(plotted) == sorted([["", 1_000_000, 10.0], [done[0], 800_000, 12.5], [done[1], 700_000, 15.0]])
    assert "dense (the base model)" in page.locator("#quality-plot .point.dense title").text_content()
    shot(page, "model")

    doomed = api.post("/jobs", json=BODY | {"output": {"push": False}}, headers=auth(alice)).json()["id"]
    page.goto(f"{site}/ui/jobs/{doomed}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.cancel button")
    expect(page.locator(".state .status")).to_have_text("cancelled", timeout=15_000)
    assert api.get(f"/jobs/{doomed}", headers=auth(alice)).json()["status"] == "cancelled"

    rule = {"name": "new releases", "authors": [org], "templates": [{"target": {"ratio": 0.3}}], "quiet_period_s": 0}
    assert api.post("/watches", json=rule, headers=auth(alice)).status_code == 201
    local_hub.seed(f"{org}/Tiny-1", save_tiny("llama_gqa", tmp_path / "release"))
    with session_factory()() as session:
        watcher.consider(session, HfApi(), f"{org}/Tiny-1", "webhook")
    page.goto(f"{site}/ui/watches")
    expect(page.locator("table.events tr.jobs_created")).to_have_count(1)
    shot(page, "watches")
    intruder = signed_in(browser, site, bob)
    response = intruder.goto(f"{site}/ui/jobs/{live}")
    assert response.status == 404 and live not in intruder.goto(f"{site}/ui").text()


def test_follow_a_real_job_run_by_a_celery_worker(site: str, browser: object, make_token, worker, sources) -> None:  # noqa: F811
    """The job page of a queued job, then a real worker runs it: the page follows the event stream and reloads
    itself once on the terminal event, showing every stage the worker went through.

    The worker stops consuming until the page is open, so the page sees the job from its start on a machine of
    any speed (no timing luck): the reload proves the terminal event arrived over the stream.
    """
    from playwright.sync_api import expect

    from slimkit.client import Client

    token = make_token("alice")
    control = worker.app.control
    assert control.cancel_consumer("gpu", destination=[worker.name], reply=True)
    try:
        with Client(site, token) as api:
            job = api.submit(sources["deep"], ratio=0.3, **FAST)
        page = signed_in(browser, site, token)
        loads: list[str] = []
        page.on("load", lambda p: loads.append(p.url))
        page.goto(f"{site}/ui/jobs/{job.id}")
        expect(page.locator(".state .status")).to_have_text("queued")
    finally:
        assert control.add_consumer("gpu", destination=[worker.name], reply=True)
    expect(page.locator(".state .status")).to_have_text("succeeded", timeout=180_000)
    expect(page.locator("table.timeline td", has_text="compress")).to_have_count(1)
    assert len(loads) == 2, loads  # our navigation, then the page's own reload after the terminal event
    stages = page.locator("table.timeline td:first-child").all_inner_texts()
    assert {"download", "compress", "push"} <= set(stages), stages
    names, values = (page.locator(f"table.metrics {cell}").all_inner_texts() for cell in ("th", "td"))
    metrics = dict(zip(names, values, strict=True))
    assert "Perplexity" in metrics and "→" in metrics["Perplexity"], metrics
    with Client(site, token) as api:
        pushed = api.get(job.id).result["repo_id"]
    expect(page.locator("a", has_text=pushed)).to_have_count(1)
    shot(page, "job")
