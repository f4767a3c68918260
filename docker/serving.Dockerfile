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

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

# --- build: the serving libraries at exactly the lock's versions and hashes ---------------------
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled once here (faster cold starts); files copied out of the cache, no links.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /opt/app
COPY pyproject.toml uv.lock README.md ./
# The lock, exported, is the constraint set: every package below and everything they pull in
# gets the lock's version, checked against the lock's hashes (uv verifies the hashes a
# constraints file carries). Only what serving imports is
# installed, so Prefect, MLflow, Great Expectations and boto3 stay out of the image (a family
# with a new library adds it here; the check below fails the build until it does).
# pyarrow: the training channel is Parquet (`train`).
ARG SERVING_PACKAGES="fastapi uvicorn pydantic pydantic-settings pandas numpy pyarrow scikit-learn skops xgboost prophet matplotlib"
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --no-dev --no-emit-project --format requirements-txt -o /tmp/lock.txt \
 && uv venv --python /usr/local/bin/python3 /opt/app/.venv \
 && uv pip install --python /opt/app/.venv/bin/python \
        --constraints /tmp/lock.txt ${SERVING_PACKAGES}
# Only the modules the server imports: the families, the model package checks, the layout's
# error type and the store's sha256 helper.
COPY adapters/__init__.py adapters/layout.py adapters/package.py adapters/store.py ./adapters/
# The training entry point (imports only core; the boto3 side of adapters/training stays out).
COPY adapters/training/__init__.py adapters/training/container.py ./adapters/training/
COPY core/__init__.py ./core/
COPY core/families ./core/families
COPY serving ./serving
# Fail the build, not the endpoint: import the server and every family.
RUN PYTHONPATH=/opt/app MPLBACKEND=Agg /opt/app/.venv/bin/python -m serving check

# --- runtime: no uv, no compiler, no root -------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libgomp: the OpenMP runtime of XGBoost and scikit-learn. tini: PID 1 that forwards SageMaker's
# SIGTERM to uvicorn (graceful shutdown within SageMaker's 30 s) and reaps worker processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent app
COPY --from=build --chown=root:root /opt/app /opt/app
ENV PATH=/opt/app/.venv/bin:$PATH \
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
