"""Every response of the running API matches its OpenAPI schema: a bounded schemathesis pass (`st run`).

Runs against a real uvicorn server on the test Postgres with a real token, with every check schemathesis
has except `positive_data_acceptance`: that one expects every schema-valid body to be accepted, but some of
our rules cannot be written in JSON Schema (exactly one of target.ratio / target.speedup, the Hub's naming
rules beyond a character class, batch × tokens <= 131072, a cursor must be one we issued). Those are
covered by the 422 tests in test_api.py and test_hub_inputs.py instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.hub_fixtures import serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_responses_match_the_openapi_schema(db, make_token, tmp_path: Path) -> None:
    from app.main import create_app

    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    token = make_token("schemathesis")
    with serve(create_app(), _free_port()) as url:
        command = [st, "run", f"{url}/openapi.json", "--checks", "all"]
        command += ["--exclude-checks", "positive_data_acceptance", "-H", f"Authorization: Bearer {token}"]
        command += ["--max-examples", "25", "--seed", "1", "--request-timeout", "30", "--workers", "1"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout  # it really ran cases
