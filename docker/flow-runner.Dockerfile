# syntax=docker/dockerfile:1.7
# The flow-runner image: what the ECS (or Kubernetes) work pool starts for each flow run.
# The worker sets the command (`prefect flow-run execute`) and PREFECT_API_URL / PREFECT__FLOW_RUN_ID;
# docker/flow-runner-entrypoint.sh prepares the environment and runs it.
#
#   docker build -f docker/flow-runner.Dockerfile -t intelli-rate-flow-runner:$(git describe --always) .

# BASE: any Debian bookworm image with Python 3.11 and its venv module (`make image` builds one
# from Debian's packages with debootstrap; `python:3.11-slim-bookworm` works unchanged).
ARG BASE=python:3.11-slim-bookworm
# uv comes from PyPI, not from a registry image: the build needs only the base and PyPI.
ARG UV_VERSION=0.13.10

# --- build: resolve nothing, install exactly the lock ------------------------------------------
FROM ${BASE} AS build
ARG UV_VERSION
# pip and uv trust the system CA bundle, so a proxy's CA mounted over /etc/ssl/certs is honoured.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/uv && /opt/uv/bin/python -m pip install --no-cache-dir --quiet "uv==${UV_VERSION}"
# Compile bytecode once here (faster cold starts on ECS); copy files out of the cache, no links.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/app/.venv UV_PYTHON=python3
WORKDIR /opt/app
# Dependencies first, from the lock alone: this layer survives code changes.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed editable: core.settings finds configs/ next to core/.
COPY cli ./cli
COPY flows ./flows
COPY tasks ./tasks
COPY core ./core
COPY adapters ./adapters
COPY serving ./serving
COPY configs ./configs
COPY docker/flow-runner-entrypoint.sh ./docker/flow-runner-entrypoint.sh
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv sync --frozen --no-dev

# --- runtime: no compiler, no uv, no root --------------------------------------------------------
FROM ${BASE} AS runtime
# libgomp: XGBoost and scikit-learn's OpenMP runtime; tini: signals reach Python, zombies reaped.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app \
 && install -d -o app -g app /var/lib/mlops
COPY --from=build --chown=root:root /opt/app /opt/app
ENV PATH=/opt/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLOPS_HOME=/var/lib/mlops \
    MPLBACKEND=Agg \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
WORKDIR /opt/app
# The code is root-owned and read-only to the runner; only MLOPS_HOME (scratch) is writable.
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/app/docker/flow-runner-entrypoint.sh"]
CMD ["check"]
