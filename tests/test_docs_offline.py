"""`/docs` and `/redoc` render without the internet: every asset URL in their HTML is served by the API."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(db) -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "an external asset"
    assert "fonts.googleapis" not in html and "cdn.jsdelivr" not in html
    assets = re.findall(r"""(?:src|href)=["']?(/docs-assets/[^"' >]+)""", html)
    assets += re.findall(r"""['"](/docs-assets/[^'"]+)['"]""", html)  # Swagger UI's CSS and JS in its script
    assert any(a.endswith(".js") for a in assets), html
    for asset in set(assets):
        got = client.get(asset)
        assert got.status_code == 200 and (len(got.content) > 1000 or asset.endswith(".png")), asset
    assert "/openapi.json" in html and client.get("/openapi.json").status_code == 200


def test_every_response_field_has_a_description(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    pending = [
        content["schema"]
        for path in spec["paths"].values()
        for operation in path.values()
        for response in operation.get("responses", {}).values()
        for content in response.get("content", {}).values()
        if "schema" in content
    ]
    seen: set[str] = set()
    missing = []
    while pending:
        schema = pending.pop()
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                for field, prop in schemas[name].get("properties", {}).items():
                    if "description" not in prop:
                        missing.append(f"{name}.{field}")
                    pending.append(prop)
            continue
        pending += [s for key in ("anyOf", "allOf", "oneOf") for s in schema.get(key, [])]
        pending += [schema[key] for key in ("items", "additionalProperties") if isinstance(schema.get(key), dict)]
    assert seen and not missing, missing
