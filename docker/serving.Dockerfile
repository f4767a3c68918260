# syntax=docker/dockerfile:1.7
# The project's image: the SageMaker container contracts (serving and training) for every family.
# SageMaker runs `docker run IMAGE train` for a training job (configs/models/*.yaml
# `training.target: sagemaker`): adapters/training/container.py reads /opt/ml/input and writes
# /opt/ml/model with the same family code as in-process training.
# SageMaker runs `docker run IMAGE serve` for an endpoint; the app answers GET /ping and
# POST /invocations on port 8080 with the model SageMaker unpacked under /opt/ml/model. The container's environment
# (set in the SageMaker model) names the model: MLOPS_MODEL_NAME, MLOPS_MODEL_VERSION and,
# required, MLOPS_MODEL_CONTENTS_SHA256 (see docs/serving.md).
#
#   docker build -f docker/serving.Dockerfile -t intelli-rate-serving:$(git describe --always) .
#   docker run --rm -p 8080:8080 -v "$PWD/model:/opt/ml/model:ro" \
#       -e MLOPS_MODEL_CONTENTS_SHA256=<from the manifest> -e MLOPS_MODEL_VERSION=v3 \
#       intelli-rate-serving:TAG serve

# BASE: any Debian bookworm image with Python 3.11 and its venv module (`make image` builds one
# from Debian's packages with debootstrap; `python:3.11-slim-bookworm` works unchanged). Both
# stages use it, so the venv's interpreter path is the same in the build and at run time.
ARG BASE=python:3.11-slim-bookworm
# uv comes from PyPI, not from a registry image, so the build needs nothing but the base and PyPI.
ARG UV_VERSION=0.13.10

# --- build: the serving libraries at exactly the lock's versions and hashes ---------------------
FROM ${BASE} AS build
ARG UV_VERSION
# pip and uv trust the system CA bundle, so a proxy's CA mounted over /etc/ssl/certs is honoured.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/uv && /opt/uv/bin/python -m pip install --no-cache-dir --quiet "uv==${UV_VERSION}"
# Bytecode compiled once here (faster cold starts); files copied out of the cache, no links.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /opt/app
COPY pyproject.toml uv.lock README.md ./
# What goes in is the lock's `serving` group (pyproject.toml), nothing written here: exported with
# its whole closure, exact versions and hashes, and installed with --require-hashes. Prefect,
# MLflow, Great Expectations and boto3 stay out of the image. A family that imports a new
# library adds it to that group; until it does, the check below fails the build.
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv export --frozen --only-group serving --no-emit-project \
        --format requirements-txt -o /tmp/serving.txt \
 && /opt/uv/bin/uv venv --python python3 /opt/app/.venv \
 && /opt/uv/bin/uv pip install --python /opt/app/.venv/bin/python --require-hashes \
        -r /tmp/serving.txt \
 # The libraries' own test suites (256 MB with their bytecode; nothing imports them to serve).
 && find /opt/app/.venv/lib -type d -name tests -prune -exec rm -rf {} +
# Only the modules the server imports: the families, the model package checks, the layout's
# error type and the store's sha256 helper (with the errors it imports). The check below fails
# the build when a copied module imports, at module level, a project module not copied here.
COPY adapters/__init__.py adapters/layout.py adapters/package.py adapters/store.py adapters/store_errors.py ./adapters/
# The training entry point (imports only core; the boto3 side of adapters/training stays out).
COPY adapters/training/__init__.py adapters/training/container.py ./adapters/training/
COPY core/__init__.py core/feedback.py core/strict.py ./core/
COPY core/families ./core/families
COPY serving ./serving
# Fail the build, not the endpoint: import the server and every family, and find every library
# any copied module imports (at the top or inside a function) in the image's environment.
RUN PYTHONPATH=/opt/app MPLBACKEND=Agg /opt/app/.venv/bin/python -m serving check

# --- runtime: no uv, no compiler, no root -------------------------------------------------------
FROM ${BASE} AS runtime
# libgomp: the OpenMP runtime of XGBoost and scikit-learn. tini: PID 1 that forwards SageMaker's
# SIGTERM to uvicorn (graceful shutdown within SageMaker's 30 s) and reaps worker processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent app
COPY --from=build --chown=root:root /opt/app /opt/app
ENV PATH=/opt/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/opt/app/.venv \
    PYTHONPATH=/opt/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLOPS_MODEL_DIR=/opt/ml/model \
    MLOPS_SERVING_HOST=0.0.0.0 \
    MLOPS_SERVING_PORT=8080
WORKDIR /opt/app
# Non-root: the code is root-owned and read-only to the server. SageMaker mounts the model
# read-only; make_tarball packs every file 0644 (directories 0755), so uid 10001 can read it.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "serving"]
CMD ["serve"]
