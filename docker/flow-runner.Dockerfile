# syntax=docker/dockerfile:1.7
# The flow-runner image: what the ECS (or Kubernetes) work pool starts for each flow run.
# The worker sets the command (`prefect flow-run execute`) and PREFECT_API_URL / PREFECT__FLOW_RUN_ID;
# docker/flow-runner-entrypoint.sh prepares the environment and runs it.
#
#   docker build -f docker/flow-runner.Dockerfile -t intelli-rate-flow-runner:$(git describe --always) .

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

# --- build: resolve nothing, install exactly the lock ------------------------------------------
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
# Compile bytecode once here (faster cold starts on ECS); copy files out of the cache, no links.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/app/.venv
WORKDIR /opt/app
# Dependencies first, from the lock alone: this layer survives code changes.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
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
    uv sync --frozen --no-dev

# --- runtime: no compiler, no uv, no root --------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libgomp: XGBoost and scikit-learn's OpenMP runtime; tini: signals reach Python, zombies reaped.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
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
