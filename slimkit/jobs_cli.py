"""`slimkit jobs …`: the job service from the command line, on top of `slimkit.client`.

    slimkit jobs submit HuggingFaceTB/SmolLM2-135M --ratio 0.3 [--method flattengpt] [--wait]
    slimkit jobs get ID | list [--status running] | cancel ID | watch ID      (--json for scripts)

The service is `SLIMKIT_API_URL` (default http://127.0.0.1:8000) with the token in `SLIMKIT_API_TOKEN`, or
`--api-url` / `--token`. Exit codes: 0 done (for `--wait`/`watch`: the job succeeded), 1 the job failed or
was cancelled, 2 the API refused the request (the message names the field), 3 the service was unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from slimkit.client import ApiError, Client, Event, Job


def add_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="submit and follow jobs on a slimkit service (SLIMKIT_API_URL)")
    jobs.add_argument("--api-url", help="the service (default: $SLIMKIT_API_URL or http://127.0.0.1:8000)")
    jobs.add_argument("--token", help="API token (default: $SLIMKIT_API_TOKEN)")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    actions = jobs.add_subparsers(dest="action", required=True)
    s = actions.add_parser("submit", help="submit a compression job")
    s.add_argument("model", help="Hub id of the model to compress")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, help="fraction of decoder attention+MLP params to remove")
    target.add_argument("--speedup", type=float, help="instead: a prefill speed-up to reach on the worker's GPU")
    s.add_argument("--method", default="intraslice", help="intraslice (default), flattengpt, transact, …")
    s.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    s.add_argument("--output-repo", help="Hub repo to push to (default: named after the source)")
    s.add_argument("--no-push", action="store_true", help="keep the result on the service, do not push")
    s.add_argument("--idempotency-key", help="retry-safe key (default: a fresh one)")
    s.add_argument("--wait", action="store_true", help="follow the job until it ends")
    for name, text in (("get", "show a job"), ("cancel", "cancel a job"), ("watch", "follow a job live")):
        actions.add_parser(name, help=text).add_argument("job_id")
    lister = actions.add_parser("list", help="your jobs, newest first")
    lister.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    lister.add_argument("--model", help="only jobs of this source model")
    lister.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")


def run(args: argparse.Namespace) -> int:
    try:
        with Client(args.api_url, args.token) as api:
            return _run(api, args)
    except ApiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (httpx.TransportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, httpx.TransportError) else 2


def _run(api: Client, args: argparse.Namespace) -> int:
    if args.action == "submit":
        output: dict[str, Any] = {"push": not args.no_push}
        if args.output_repo:
            output["repo_id"] = args.output_repo
        job = api.submit(
            args.model,
            ratio=args.ratio,
            speedup=args.speedup,
            method=args.method,
            revision=args.revision,
            output=output,
            idempotency_key=args.idempotency_key,
        )
        _show(job, args.json)
        return _follow(api, job.id, args.json) if args.wait else 0
    if args.action == "get":
        _show(api.get(args.job_id), args.json)
        return 0
    if args.action == "cancel":
        _show(api.cancel(args.job_id), args.json)
        return 0
    if args.action == "watch":
        return _follow(api, args.job_id, args.json)
    jobs = []
    for job in api.list(status=args.status, model=args.model, page_size=min(args.limit, 200)):
        jobs.append(job)
        if len(jobs) >= args.limit:
            break
    if args.json:
        print(json.dumps([j.raw for j in jobs], indent=2))
    for job in [] if args.json else jobs:
        print(f"{job.id}  {job.status:<9}  {job.stage or '':<10}  {job.method:<10}  {job.model}")
    return 0


def _show(job: Job, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.raw, indent=2))
        return
    print(f"job {job.id}: {job.status}" + (f" ({job.stage})" if job.stage and not job.finished else ""))
    if job.error:
        print(f"  error {job.error['code']}: {job.error['message']}")
    result = job.result or {}
    if result.get("repo_id"):
        print(f"  pushed to {result['repo_id']}" + (f" ({result['url']})" if result.get("url") else ""))


def _follow(api: Client, job_id: str, as_json: bool) -> int:
    """Print one line per event (stage changes, layer progress) until the job ends; exit 0 iff it succeeded."""

    def line(event: Event) -> None:
        if as_json:
            print(json.dumps({"id": event.id, "event": event.kind, "data": event.data}), flush=True)
            return
        progress = event.data.get("progress") or {}
        where = f"layer {progress['layer']}/{progress['layers']}" if progress.get("layers") else ""
        if progress.get("tokens_total"):
            where = f"{progress.get('tokens', 0)}/{progress['tokens_total']} tokens"
        if event.kind in ("stage", "progress"):
            print(f"  {event.data.get('stage') or '':<10} {where}".rstrip(), flush=True)
        elif event.kind != "terminal":
            print(f"  {event.kind}", flush=True)

    job = api.wait(job_id, on_event=line)
    if not as_json:
        _show(job, False)
    return 0 if job.status == "succeeded" else 1
