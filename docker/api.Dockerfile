# syntax=docker/dockerfile:1
# slimkit API image: FastAPI + Alembic + the Celery client. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t slimkit-api .
#
# No torch / transformers here: the API never imports the engine (app/schemas.py keeps a static list of method
# names). The project's base dependencies pin torch, so a plain `pip install ".[service]"` would pull several GB of
# CUDA wheels. Instead the requirements are read from pyproject.toml (the `service` extra plus huggingface-hub,
# which the API uses to resolve revisions at submit time) and the project itself is installed with --no-deps.
# The install is editable so that app/cli.py finds alembic.ini and migrations/ next to the code in /app.
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 slimkit \
    && useradd --system --uid 10001 --gid slimkit --home-dir /home/slimkit --create-home \
       --shell /usr/sbin/nologin slimkit

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
hub = [d for d in p['dependencies'] if d.startswith('huggingface-hub')]; assert hub, 'huggingface-hub not in dependencies'; \
print('\n'.join(p['optional-dependencies']['service'] + hub))" > /tmp/api-requirements.txt \
    && cat /tmp/api-requirements.txt \
    && pip install -r /tmp/api-requirements.txt \
    && rm /tmp/api-requirements.txt

COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY worker ./worker
COPY slimkit ./slimkit
RUN pip install --no-deps -e . \
    && python -c "import app.main, app.cli, worker.celery_app, sys; \
assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'the API must not import the engine'"
COPY docker/api-entrypoint.sh /usr/local/bin/api-entrypoint.sh

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Run through sh: works whatever file mode the checkout gave the script (and with the legacy builder).
ENTRYPOINT ["/bin/sh", "/usr/local/bin/api-entrypoint.sh"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
