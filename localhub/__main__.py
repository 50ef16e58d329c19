"""`python -m localhub --root DIR [--port 8900] [--seed ns/name=PATH ...] [--token T]`: run the local Hub.

For the offline demo: point the client at it with `HF_ENDPOINT=http://127.0.0.1:8900 HF_HUB_DISABLE_XET=1`
(both read when huggingface_hub is imported). Repos persist under `--root` across restarts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from localhub.seed import seed
from localhub.server import create_app
from localhub.storage import DEFAULT_LFS_THRESHOLD


def parse_seed(spec: str) -> tuple[str, str, Path]:
    """`ns/name=PATH` seeds a model; `datasets/ns/name=PATH` a dataset."""
    repo, sep, path = spec.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected ns/name=PATH")
    repo_type = "model"
    if repo.startswith("datasets/"):
        repo_type, repo = "dataset", repo.removeprefix("datasets/")
    return repo_type, repo, Path(path).expanduser()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localhub", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding repos and blobs (created)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--token", default=None, help="require `Authorization: Bearer TOKEN` on every request")
    parser.add_argument("--lfs-threshold", type=int, default=DEFAULT_LFS_THRESHOLD, help="bytes; LFS from here")
    parser.add_argument("--seed", type=parse_seed, action="append", default=[], metavar="[datasets/]NS/NAME=PATH")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    app = create_app(args.root, token=args.token, lfs_threshold=args.lfs_threshold)
    for repo_type, repo_id, path in args.seed:
        oid = seed(app, repo_id, path, repo_type=repo_type)
        print(f"seeded {repo_type} {repo_id} from {path} at {oid}", flush=True)
    print(f"export HF_ENDPOINT=http://{args.host}:{args.port} HF_HUB_DISABLE_XET=1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
