#!/usr/bin/env bash
# Entry point of the flow-runner image (docker/flow-runner.Dockerfile); tests run it as a plain
# process from the checkout.
#
#   flow-runner-entrypoint.sh                 `prefect flow-run execute` when the worker set
#                                             PREFECT__FLOW_RUN_ID, else `check`
#   flow-runner-entrypoint.sh check           import every flow, load every config, print JSON;
#                                             exit 0 means the image can run the pipeline
#   flow-runner-entrypoint.sh CMD [ARGS...]   run CMD as given (the ECS worker passes
#                                             `prefect flow-run execute`; `mlops status`, ...)
#
# Exit codes of its own: 64 a flow run without PREFECT_API_URL, 73 MLOPS_HOME not writable.
set -euo pipefail

app_dir="${MLOPS_APP_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

# Defaults only: whatever the work pool's job template sets wins.
export MLOPS_HOME="${MLOPS_HOME:-${app_dir}/.mlops}"
export GX_ANALYTICS_ENABLED="${GX_ANALYTICS_ENABLED:-false}"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export MPLBACKEND="${MPLBACKEND:-Agg}"

fail() {
    echo "flow-runner: $2" >&2
    exit "$1"
}

# A read-only root filesystem (a hardened task definition) must still give scratch space.
mkdir -p "${MLOPS_HOME}" 2>/dev/null || true
[[ -w "${MLOPS_HOME}" ]] || fail 73 "MLOPS_HOME=${MLOPS_HOME} is not writable; mount a volume there"

# Relative paths in settings (.mlops, configs/) resolve against the project, as on a laptop.
cd "${app_dir}"

if [[ $# -eq 0 ]]; then
    if [[ -n "${PREFECT__FLOW_RUN_ID:-}" ]]; then
        set -- prefect flow-run execute
    else
        set -- check
    fi
fi

if [[ "$1" == "prefect" && "${2:-}" == "flow-run" && -z "${PREFECT_API_URL:-}" ]]; then
    # Without it the run would start a private ephemeral API and report to nobody.
    fail 64 "PREFECT_API_URL is not set; a flow run must report to the Prefect server"
fi

if [[ "$1" == "check" ]]; then
    exec python - <<'PY'
import json
import platform

import prefect

import flows.cleanup
import flows.monitor
import flows.retrain
import flows.rollout  # noqa: F401  (importing is the check)
from core.config import load_model_configs, load_platform_config
from core.settings import load_settings

settings = load_settings()
print(json.dumps({
    "python": platform.python_version(),
    "prefect": prefect.__version__,
    "models": [c.name for c in load_model_configs(settings.config_dir)],
    "project_tag": load_platform_config(settings.config_dir).project_tag,
    "config_dir": str(settings.config_dir),
    "home": str(settings.home_dir),
}))
PY
fi

exec "$@"
