#!/usr/bin/env bash
# The project's test command (what CI runs): set up, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q --durations=15 "$@"  # the slowest tests, so their cost stays visible
