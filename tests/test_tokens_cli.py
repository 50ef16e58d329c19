"""Operator token management: create, list (never the values), revoke — and a revoked token is refused."""

from __future__ import annotations

import json
import uuid

from fastapi.testclient import TestClient

from app.cli import main
from tests.test_api import auth


def test_create_list_revoke(db, capsys) -> None:
    from app.main import create_app

    client = TestClient(create_app())
    assert main(["create-token", "--owner", "carol", "--name", "ci", "--allow-output", "carol/*"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("slk_") and client.get("/jobs", headers=auth(token)).status_code == 200
    assert main(["list-tokens", "--owner", "carol", "--json"]) == 0
    listed = capsys.readouterr().out
    (row,) = [json.loads(line) for line in listed.splitlines()]
    assert row["owner"] == "carol" and row["name"] == "ci" and row["revoked_at"] is None
    assert row["output_patterns"] == ["carol/*"] and token not in listed
    assert main(["revoke-token", row["id"]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert client.get("/jobs", headers=auth(token)).status_code == 401
    assert main(["list-tokens", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["revoked_at"] is not None
    assert main(["revoke-token", str(uuid.uuid4())]) == 2
    assert main(["revoke-token", "not-an-id"]) == 2
