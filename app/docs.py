"""`/docs` (Swagger UI) and `/redoc` that work offline: their JavaScript and CSS come from the pinned
`fastapi-offline` distribution (MIT; it vendors the Swagger UI and ReDoc bundles) and are served by this
process under `/docs-assets/`. FastAPI's defaults load them from a CDN, which a deployment without internet
access (or a strict content policy) shows as a blank page.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


# FastAPI's own 422 schemas come without field descriptions; the API promises one on every response field.
VALIDATION_FIELDS = {
    "HTTPValidationError": {"detail": "one entry per refused field"},
    "ValidationError": {
        "loc": "where the problem is, e.g. ['body', 'target', 'ratio']",
        "msg": "what is wrong with it",
        "type": "machine-readable error type, e.g. missing, greater_than, value_error",
        "input": "the refused value, when short (long values are not echoed)",
        "ctx": "details of the rule that failed, e.g. the limit",
    },
}


def describe_validation_errors(app: FastAPI) -> None:
    """Add descriptions to the generated 422 schemas, once, when the OpenAPI document is first built."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            components = schema.get("components", {}).get("schemas", {})
            for name, fields in VALIDATION_FIELDS.items():
                for field, text in fields.items():
                    prop = components.get(name, {}).get("properties", {}).get(field)
                    if prop is not None:
                        prop.setdefault("description", text)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    """Mount the assets and the two pages; the app must be created with `docs_url=None, redoc_url=None`."""
    describe_validation_errors(app)
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} — API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} — API reference",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
