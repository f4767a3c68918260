"""The real server path: ``prefect server start`` on loopback, the documented commands, a worker.

Exactly what docs/deployments.md tells a new user to type, as subprocesses:

    prefect server start --host 127.0.0.1 --port PORT
    python deployments/deploy.py
    docker/flow-runner-entrypoint.sh prefect flow-run execute      (how the ECS pool runs a run)
    prefect worker start --pool intelli-rate-process
    prefect deployment run 'retrain/weekly' --watch

The test itself only reads the server's REST API. Everything lives under a temporary directory;
the server and the worker are killed (their whole process groups) on teardown.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.source import seed_source
from core.settings import PROJECT_ROOT
from tests.fixtures.home import SMALL_SOURCE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
SERVER_START_S = 120
GATE_TABLE = "| metric | rule | challenger | champion | threshold | passed |"


@dataclass
class Server:
    """A running ``prefect server`` and the environment every subprocess gets."""

    api: str
    env: dict[str, str]
    home: Path
    logs: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=60, transport=_RetryServerErrors())

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in the project directory with the server's env."""
        return subprocess.run(
            list(args),
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a long-running command in its own process group, output to a log file."""
        log = (self.logs / f"{name}.log").open("wb")
        return subprocess.Popen(
            list(args),
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so teardown can stop its children too
        )


class _RetryServerErrors(httpx.BaseTransport):
    """Send a request again when the server answers 5xx (SQLite's "database is locked" under
    load) or, for a GET, does not answer in time (a CPU-starved server on a 2-core CI machine
    once took more than 30 s to answer one poll while a retrain ran beside it); the Prefect
    client retries such answers too. A 4xx is returned at once."""

    def __init__(self, attempts: int = 5) -> None:
        self._inner = httpx.HTTPTransport()
        self._attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._inner.handle_request(request)
            except httpx.TransportError:
                if request.method != "GET" or attempt == self._attempts:
                    raise
                time.sleep(attempt)
                continue
            if response.status_code < 500 or attempt == self._attempts:
                return response
            response.read()
            response.close()
            time.sleep(attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._inner.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _environment(tmp: Path, api: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLOPS_", "MLFLOW_", "AWS_"))
    }
    return {
        **keep,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # Workers poll every 15 s by default; a test should not wait that long per run.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
        "MLOPS_HOME": str(tmp / "mlops-home"),
        "MLOPS_ENDPOINT_TARGET": "none",
        "GX_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    logs = tmp / "logs"
    logs.mkdir()
    srv = Server(api=api, env=_environment(tmp, api), home=tmp / "mlops-home", logs=logs)
    proc = srv.start(
        "server",
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited:\n{(logs / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not up after {SERVER_START_S} s")
            time.sleep(0.5)
        yield srv
    finally:
        _stop(proc)


def _flow_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    response = client.get(f"/flow_runs/{run_id}")
    response.raise_for_status()
    return dict(response.json())


def _state_names(client: httpx.Client, run_id: str) -> list[str]:
    response = client.get("/flow_run_states/", params={"flow_run_id": run_id})
    response.raise_for_status()
    return [s["name"] for s in sorted(response.json(), key=lambda s: s["timestamp"])]


def _wait_final(client: httpx.Client, run_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [_flow_run(client, r) for r in run_ids]
        if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            return runs
        if time.monotonic() > deadline:
            pytest.fail(f"runs not finished after {timeout} s: {[r['state'] for r in runs]}")
        time.sleep(1)


def _run_id(output: str) -> str:
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    return match[1]


def _run_to_the_end(server: Server, api: httpx.Client, deployment: str, timeout: float) -> str:
    """``prefect deployment run`` as typed, then wait for the run's end through the REST API.

    Not ``--watch``: in Prefect 3.8.8 it only follows the event stream, and a terminal event it
    misses leaves it waiting after the run has finished (seen once with the monitor run here).
    """
    started = server.run(str(BIN / "prefect"), "deployment", "run", deployment, timeout=60)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    run_id = _run_id(started.stdout)
    (run,) = _wait_final(api, [run_id], timeout=timeout)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    return run_id


def test_deployments_on_a_real_server(server: Server) -> None:
    seed_source(f"sqlite:///{server.home / 'source.db'}", weeks=3, **SMALL_SOURCE)
    api = server.client()

    # 1. Register the deployments with the documented command; the schedule comes from config.
    registered = server.run(str(BIN / "python"), "deployments/deploy.py", timeout=180)
    assert registered.returncode == 0, registered.stderr[-3000:]
    weekly = api.get("/deployments/name/retrain/weekly").json()
    (schedule,) = weekly["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1"
    assert schedule["schedule"]["timezone"] == "Europe/London"
    assert weekly["global_concurrency_limit"]["name"] == "intelli-rate-model-writers"
    assert weekly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert set(weekly["parameter_openapi_schema"]["properties"]) == {"models", "force", "reason"}
    rollout = api.get("/deployments/name/rollout/on-demand").json()
    assert rollout["global_concurrency_limit"]["id"] == weekly["global_concurrency_limit"]["id"]
    for name in ("cleanup/weekly-dry-run", "monitor/daily"):
        assert api.get(f"/deployments/name/{name}").status_code == 200, name
    # The daily look at running experiments; a promotion writes, so it shares the limit.
    evaluate = api.get("/deployments/name/experiment/evaluate").json()
    assert [s["schedule"]["cron"] for s in evaluate["schedules"]] == ["0 7 * * *"]
    assert evaluate["global_concurrency_limit"]["id"] == weekly["global_concurrency_limit"]["id"]
    # What a person types to see them (the CLI's list calls need a compatible server).
    listed = server.run(str(BIN / "prefect"), "deployment", "ls", timeout=60)
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    for name in ("weekly", "on-demand", "weekly-dry-run", "daily"):
        assert name in listed.stdout, listed.stdout
    # Registering again changes nothing, and keeps the shared limit.
    again = server.run(str(BIN / "python"), "deployments/deploy.py", timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    weekly_again = api.get("/deployments/name/retrain/weekly").json()
    assert (
        weekly_again["global_concurrency_limit"]["id"] == weekly["global_concurrency_limit"]["id"]
    )

    # 2. The flow-runner image's entry point runs a flow run as the ECS pool starts it.
    monitor_id = api.get("/deployments/name/monitor/daily").json()["id"]
    response = api.post(f"/deployments/{monitor_id}/create_flow_run", json={})
    assert response.status_code == 201, f"{response.status_code} {response.text[:2000]}"
    created = response.json()
    env = {**server.env, "PREFECT__FLOW_RUN_ID": created["id"]}
    executed = subprocess.run(
        ["bash", "docker/flow-runner-entrypoint.sh", "prefect", "flow-run", "execute"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert executed.returncode == 0, executed.stderr[-3000:]
    assert _flow_run(api, created["id"])["state"]["type"] == "COMPLETED"

    # 3. A worker, and the weekly retrain run on demand, to completion.
    worker = server.start(
        "worker", str(BIN / "prefect"), "worker", "start", "--pool", "intelli-rate-process"
    )
    try:
        _retrain_and_queue(server, api)
    finally:
        _stop(worker)


def _retrain_and_queue(server: Server, api: httpx.Client) -> None:
    prefect = str(BIN / "prefect")
    run_id = _run_to_the_end(server, api, "retrain/weekly", timeout=400)

    # The run's artifacts: the summary on the run, a gate table per model on its subflows.
    children = api.post(
        "/flow_runs/filter",
        json={
            "flow_runs": {"parent_flow_run_id": {"any_": [run_id]}},
            "limit": 50,
            "sort": "ID_DESC",
        },
    ).json()
    run_ids = [run_id, *(c["id"] for c in children)]
    artifacts = api.post(
        "/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": run_ids}}, "limit": 200, "sort": "ID_DESC"},
    ).json()
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    assert by_key["retrain-summary"]["flow_run_id"] == run_id
    for model in ("abuse-detector", "limit-optimiser", "traffic-forecaster"):
        gate = by_key[f"gate-{model}"]
        assert GATE_TABLE in gate["data"], gate["data"]
        assert "-> **promote" in gate["data"]

    # 4. A retrain and a rollout at once (two deployments, one shared limit): one runs, the
    # other waits its turn, both finish. (Each run is a fresh process importing everything:
    # about 40 s here, so two runs prove the queue as well as three would.)
    starts = [
        ("retrain/weekly", "force=true", 'models=["limit_optimiser"]', "reason=first"),
        ("rollout/on-demand", "model=limit_optimiser", "reason=second"),
    ]
    queued = []
    for name, *params in starts:
        args = [x for p in params for x in ("--param", p)]
        started = server.run(prefect, "deployment", "run", name, *args, timeout=60)
        assert started.returncode == 0, started.stderr[-3000:]
        queued.append(_run_id(started.stdout))
    runs = _wait_final(api, queued, timeout=400)
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"] * 2, [r["state"] for r in runs]
    spans = sorted((r["start_time"], r["end_time"]) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"runs overlapped: {spans}"
    waited = [r for r in queued if "AwaitingConcurrencySlot" in _state_names(api, r)]
    assert len(waited) >= 1, [_state_names(api, r) for r in queued]

    # 5. A drifted week: the monitor deployment requests a retrain naming the drifted columns.
    seed_source(f"sqlite:///{server.home / 'source.db'}", append_weeks=1, drift=0.8, **SMALL_SOURCE)
    _run_to_the_end(server, api, "monitor/daily", timeout=300)
    triggered = api.post(
        "/flow_runs/filter",
        json={
            "flow_runs": {"tags": {"all_": ["triggered-by-monitor"]}},
            "limit": 10,
            "sort": "ID_DESC",
        },
    ).json()
    assert len(triggered) == 1, triggered
    assert triggered[0]["deployment_id"] == api.get("/deployments/name/retrain/weekly").json()["id"]
    assert "drift in" in triggered[0]["parameters"]["reason"]
    assert "error_rate" in triggered[0]["parameters"]["reason"]
    # Events are written by the server's persister in batches: give it a few seconds.
    query = {"filter": {"event": {"name": ["intelli-rate.model.threshold-crossed"]}}, "limit": 10}
    deadline = time.monotonic() + 30
    while not (events := api.post("/events/filter", json=query).json()["events"]):
        assert time.monotonic() < deadline, "no threshold-crossed event"
        time.sleep(1)
    assert {e["resource"]["prefect.resource.name"] for e in events} <= {
        "abuse_detector",
        "limit_optimiser",
        "traffic_forecaster",
    }


def test_notification_automations_register_as_documented(server: Server) -> None:
    """The README's notification set-up, as typed: a block, then the automations file."""
    script = f"""
set -euo pipefail
{BIN / "python"} -c "
from prefect.blocks.notifications import SlackWebhook
hook = SlackWebhook(url='https://hooks.slack.com/services/T000/B000/XXXX')
hook.save('intelli-rate-alerts', overwrite=True)"
BLOCK_ID=$({BIN / "python"} -c "
from prefect.blocks.notifications import SlackWebhook
print(SlackWebhook.load('intelli-rate-alerts')._block_document_id)")
sed "s/NOTIFY_BLOCK_ID/$BLOCK_ID/" deployments/automations.yaml > {server.logs}/automations.yaml
{BIN / "prefect"} automation create --from-file {server.logs}/automations.yaml
echo "$BLOCK_ID"
"""
    done = server.run("bash", "-c", script, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    block_id = done.stdout.strip().splitlines()[-1]
    automations = server.client().post("/automations/filter", json={}).json()
    names = {a["name"] for a in automations}
    assert names >= {
        "intelli-rate run failed or crashed",
        "intelli-rate rollback",
        "intelli-rate monitor threshold crossed",
    }, names
    for automation in automations:
        (action,) = automation["actions"]
        assert action["type"] == "send-notification"
        assert action["block_document_id"] == block_id


def _entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLOPS_"))}
    return subprocess.run(
        ["bash", str(PROJECT_ROOT / "docker" / "flow-runner-entrypoint.sh"), *args],
        cwd="/",
        env={**base, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_entrypoint_check_imports_the_flows_and_loads_the_configs(tmp_path: Path) -> None:
    import json

    done = _entrypoint(MLOPS_HOME=str(tmp_path / "home"))  # no arguments, no flow run: check
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["models"] == ["abuse_detector", "limit_optimiser", "traffic_forecaster"]
    assert report["home"] == str(tmp_path / "home")


def test_entrypoint_refuses_a_flow_run_without_a_server(tmp_path: Path) -> None:
    done = _entrypoint("prefect", "flow-run", "execute", MLOPS_HOME=str(tmp_path))
    assert done.returncode == 64
    assert "PREFECT_API_URL is not set" in done.stderr


def test_entrypoint_refuses_an_unwritable_home(tmp_path: Path) -> None:
    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o500)
    if os.access(home, os.W_OK):
        pytest.skip("running as root: permissions do not stop writes")
    done = _entrypoint("true", MLOPS_HOME=str(home))
    assert done.returncode == 73, done.stderr
