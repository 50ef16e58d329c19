"""Operator commands: `python -m app.cli create-token --owner alice`, `python -m app.cli migrate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.auth import create_token
from app.db import session_factory

ROOT = Path(__file__).resolve().parents[1]


def migrate() -> None:
    """Bring the database schema to the latest migration (safe to run from several processes)."""
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("create-token", help="create an API token (printed once, stored hashed)")
    token.add_argument("--owner", required=True)
    token.add_argument("--name", default="")
    token.add_argument(
        "--allow-output",
        action="append",
        metavar="PATTERN",
        help="a Hub repo pattern this token's jobs may push to, e.g. 'acme/*' (repeatable; default: the "
        "deployment's SLIMKIT_OUTPUT_PATTERNS, else <owner>/*)",
    )
    sub.add_parser("migrate", help="alembic upgrade head")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        migrate()
    else:
        with session_factory()() as session:
            print(create_token(session, args.owner, args.name, args.allow_output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
