# syntax=docker/dockerfile:1
# slimkit GPU worker image: the compression engine + the Celery worker, on the official PyTorch CUDA runtime image.
# Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t slimkit-worker .
#
# torch comes from the base image (2.13.0+cu126, installed with pip into the system Python 3.12) and must never be
# replaced: pyproject.toml pins torch==2.13.0, which the base image's 2.13.0+cu126 satisfies (PEP 440 ignores the
# local label), and a constraints file written from the base image's own torch/triton/nvidia-* versions makes any
# other resolution fail the build instead of silently swapping in a PyPI wheel. After the install the build checks
# that torch is still the same CUDA build.
# Another CUDA line (e.g. 13.0 for drivers >= 580): --build-arg TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
# (the torch version must stay 2.13.0). Refresh the digest with `docker buildx imagetools inspect IMAGE:TAG`.
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime@sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4
FROM ${TORCH_IMAGE}

# PIP_BREAK_SYSTEM_PACKAGES: the base image's Python is the distribution's (PEP 668 marker); pip installs into
# /usr/local/lib/python3.*/dist-packages next to the image's torch and touches no apt-managed package.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    HF_HOME=/data/hf-cache \
    SLIMKIT_WORK_DIR=/data/work

# uid 10001: Ubuntu-based images already have uid 1000 (`ubuntu`). /data/* are volume mount points; a fresh named
# volume takes their ownership, so the non-root worker can write the Hub cache and its per-job scratch space.
RUN groupadd --system --gid 10001 slimkit \
    && useradd --system --uid 10001 --gid slimkit --home-dir /home/slimkit --create-home \
       --shell /usr/sbin/nologin slimkit \
    && mkdir -p /data/hf-cache /data/work \
    && chown -R slimkit:slimkit /data

WORKDIR /app

# Freeze what the base image provides for the GPU stack: pip may reuse these, never replace them.
RUN python3 -c "import importlib.metadata as md, re; \
pins = sorted({f'{d.metadata[\"Name\"]}=={d.version}' for d in md.distributions() \
if re.match(r'(torch|torchvision|torchaudio|triton|nvidia-)', d.metadata['Name'] or '', re.I)}); \
assert any(p.lower().startswith('torch==') for p in pins), 'no torch in the base image'; \
print('\n'.join(pins))" > /etc/slimkit-gpu-constraints.txt \
    && cat /etc/slimkit-gpu-constraints.txt \
    && python3 -c "import torch; print(torch.__version__, torch.version.cuda)" > /etc/slimkit-torch-build.txt

# Dependencies first (the engine's and the `service` extra), read from pyproject.toml: this layer is rebuilt only
# when pyproject.toml changes, not on every code change.
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > /tmp/worker-requirements.txt \
    && cat /tmp/worker-requirements.txt \
    && python3 -m pip install -c /etc/slimkit-gpu-constraints.txt -r /tmp/worker-requirements.txt \
    && rm /tmp/worker-requirements.txt

COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY worker ./worker
COPY slimkit ./slimkit
RUN python3 -m pip install --no-deps -e . \
    && python3 -c "import torch; now = f'{torch.__version__} {torch.version.cuda}'; \
was = open('/etc/slimkit-torch-build.txt').read().strip(); \
assert now == was and torch.version.cuda, f'torch changed from {was} to {now}'; \
import slimkit, worker.celery_app; print('slimkit', slimkit.__version__, '| torch', now)"

USER 10001:10001
# The node name is celery@<container hostname>; the ping is answered by the worker's main process, so it also
# succeeds while a long job runs in the (single) child process.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "celery -A worker.celery_app inspect ping -d \"celery@$HOSTNAME\" --timeout 10 || exit 1"]
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "gpu", "--pool=prefork", "--concurrency=1", \
     "--max-tasks-per-child=1", "-O", "fair", "-l", "info"]
