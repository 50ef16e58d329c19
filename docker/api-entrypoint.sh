#!/bin/sh
# API container start: bring the schema to the latest migration (idempotent; concurrent starts are serialised
# by a Postgres advisory lock), then hand over to the server (or to any command given, e.g. `python -m app.cli …`).
set -eu
python -m app.cli migrate
[ "$#" -gt 0 ] || set -- uvicorn app.main:app --host 0.0.0.0 --port 8000
exec "$@"
