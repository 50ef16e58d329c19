"""Operator commands: `python -m app.cli create-token --owner alice`, `list-tokens`, `revoke-token ID`, `migrate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.auth import create_token, list_tokens, revoke_token
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
    lister = sub.add_parser("list-tokens", help="tokens (id, owner, name, created, revoked; never their values)")
    lister.add_argument("--owner", help="only this owner's tokens")
    lister.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = sub.add_parser("revoke-token", help="revoke a token by id (see list-tokens): its next request is a 401")
    revoke.add_argument("token_id")
    sub.add_parser("migrate", help="alembic upgrade head")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        migrate()
        return 0
    with session_factory()() as session:
        if args.command == "create-token":
            print(create_token(session, args.owner, args.name, args.allow_output))
        elif args.command == "list-tokens":
            for row in list_tokens(session, args.owner):
                item = {
                    "id": str(row.id),
                    "owner": row.owner,
                    "name": row.name,
                    "created_at": row.created_at.isoformat(),
                    "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
                    "output_patterns": row.output_patterns,
                }
                print(json.dumps(item) if args.json else "  ".join(str(v) for v in item.values()))
        else:
            try:
                row = revoke_token(session, args.token_id)
            except ValueError:
                row = None
            if row is None:
                print(f"no token with id {args.token_id}", file=sys.stderr)
                return 2
            print(f"revoked {row.id} ({row.owner}{', ' + row.name if row.name else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
