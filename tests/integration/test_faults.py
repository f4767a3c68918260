"""Faults through real parts: a killed exporter or publisher, S3/SageMaker errors on the wire.

* An export killed between its Parquet parts, or before its manifest (PostgreSQL source), is
  invisible: no snapshot, no watermark moved; the next export takes the same rows.
* A process killed while publishing (between files; between the files and the pointer; between
  the promotion record and ``latest.json``) leaves nothing partial as latest, and the next run
  completes without repair. The publisher is a real child process, SIGKILLed at the point.
* A retrain killed inside its rollout (new variant running, route not switched) leaves the
  champion serving with pointer and alias on it; the next retrain completes.
* Transient S3 and SageMaker faults (503 SlowDown, 500, throttling, connection reset) injected
  by :class:`tests.fixtures.faults.FaultProxy` between the client and moto server are retried
  by boto3's standard retry mode, and the operation succeeds; a permanent error fails with
  the AWS error code and message.
* The S3 side of the store's limits and compare-and-swap (the local side is in
  ``tests/unit/test_integrity.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.endpoints.sagemaker.target import SageMakerTarget
from adapters.layout import PublishError
from adapters.pointer import move_latest, promotion_history, read_latest
from adapters.snapshots import current_watermark, list_snapshots
from adapters.source import seed_source
from adapters.store import LocalStore, PreconditionFailed, S3Store, store_from_uri
from adapters.versions import list_versions, publish_version, verify_version
from core.endpoint import RolloutFailed
from core.settings import PROJECT_ROOT, load_settings
from tasks.export import export_snapshot
from tests.fixtures.faults import FaultProxy, key_is, sagemaker_action
from tests.fixtures.published import MODEL, files_for
from tests.integration.test_export_postgres import SMALL, TODAY, dataset
from tests.integration.test_export_postgres import pg as pg  # the fixture, reused
from tests.integration.test_sagemaker_target import IMAGE, Log, version
from tests.integration.test_sagemaker_target import env as env  # the fixture, reused

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    server = FaultProxy(moto_server).start()
    try:
        yield server
    finally:
        server.stop()


# --- a publisher killed midway -----------------------------------------------------------------

PUBLISHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from adapters.pointer import move_latest
    from adapters.store import S3Store
    from adapters.versions import publish_version

    uri, endpoint, files_dir, kill_at = sys.argv[1:5]

    class Dying(S3Store):
        writes = 0

        def _count(self, key):
            Dying.writes += 1
            label = key.rsplit("/", 1)[-1]
            if kill_at in (str(Dying.writes), label):
                os.kill(os.getpid(), signal.SIGKILL)

        def put_file(self, key, path, **kw):
            self._count(key)
            super().put_file(key, path, **kw)

        def put_bytes(self, key, data, **kw):
            self._count(key)
            super().put_bytes(key, data, **kw)

    store = Dying(uri, endpoint_url=endpoint)
    files = {p.name: p for p in Path(files_dir).iterdir()}
    published = publish_version(store, "abuse_detector", files, {"run": "killed"})
    if kill_at == "before-pointer":
        os.kill(os.getpid(), signal.SIGKILL)
    move_latest(store, "abuse_detector", published.version, reason="killed run")
    """
)


def run_publisher(uri: str, endpoint: str, files_dir: Path, kill_at: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PUBLISHER, uri, endpoint, str(files_dir), kill_at],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode


@pytest.mark.parametrize(
    ("kill_at", "what"),
    [
        ("2", "after the claim and one file: between files"),
        ("before-pointer", "complete version, pointer not moved"),
        ("latest.json", "promotion record appended, latest.json not written"),
    ],
)
def test_a_publisher_killed_midway_leaves_latest_intact_and_the_next_run_completes(
    s3_store_uri: str, moto_server: str, tmp_path: Path, kill_at: str, what: str
) -> None:
    store = store_from_uri(s3_store_uri, endpoint_url=moto_server)
    first = publish_version(store, MODEL, files_for(tmp_path, "a"), {"run": "first"})
    move_latest(store, MODEL, first.version, reason="first")
    files_dir = files_for(tmp_path, "killed")["model.tar.gz"].parent

    assert run_publisher(s3_store_uri, moto_server, files_dir, kill_at) == -9, what

    # Nothing partial is latest: the pointer still names the complete v1, which verifies.
    latest = read_latest(store, MODEL)
    assert latest is not None and latest["version"] == "v1", what
    verify_version(
        store, MODEL, "v1", tmp_path / "v1", expected_manifest_sha256=latest["manifest_sha256"]
    )
    # The next run completes without repair: a new number, a complete version, the pointer.
    nxt = publish_version(store, MODEL, files_for(tmp_path, "next"), {"run": "next"})
    assert nxt.version == "v3"
    moved = move_latest(store, MODEL, nxt.version, reason="next")
    assert read_latest(store, MODEL) == moved
    history = promotion_history(store, MODEL)
    assert history[-1]["version"] == "v3" and history[-1]["seq"] == moved["seq"]
    complete = {v["version"]: v["complete"] for v in list_versions(store, MODEL)}
    assert complete["v1"] and complete["v3"]


EXPORTER = textwrap.dedent(
    """
    import os, signal, sys
    from adapters.store import LocalStore
    from tests.integration.test_export_postgres import dataset
    from tasks.export import export_snapshot

    url, root, kill_at = sys.argv[1:4]

    class Dying(LocalStore):
        parts = 0

        def put_file(self, key, path, **kw):
            super().put_file(key, path, **kw)
            Dying.parts += 1
            if kill_at == "part" and Dying.parts == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        def put_bytes(self, key, data, **kw):
            if kill_at == "manifest" and key.endswith("/manifest.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            super().put_bytes(key, data, **kw)

    export_snapshot(url, Dying(root), dataset("abuse_detector"), chunk_rows=300, part_rows=500)
    """
)


def test_an_export_killed_midway_is_invisible_and_the_next_export_completes(
    pg: str, tmp_path: Path
) -> None:
    kill_at = "part"  # "manifest" (every part written) behaves the same; one case is enough
    seed_source(pg, weeks=1, today=TODAY, **SMALL)
    root = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", EXPORTER, pg, str(root), kill_at],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stdout + done.stderr
    store = LocalStore(root)
    ds = dataset("abuse_detector")
    assert store.list(f"snapshots/{ds.name}")  # parts were written...
    assert list_snapshots(store, ds.name) == []  # ...but no snapshot exists
    assert current_watermark(store, ds.name) is None

    info = export_snapshot(pg, store, ds, chunk_rows=300, part_rows=500)
    assert info is not None and info.rows == 6 * 24 * 7
    assert [s["snapshot_id"] for s in list_snapshots(store, ds.name)] == [info.snapshot_id]


# --- transient and permanent S3 faults ----------------------------------------------------------


def test_transient_s3_faults_are_retried_and_the_publish_succeeds(
    s3_store_uri: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    # The store as the pipeline builds it (standard retry mode), talking through the proxy.
    store = store_from_uri(s3_store_uri, endpoint_url=proxy.url)
    rules = [
        proxy.inject(key_is("PUT", "/claim.json"), "503"),
        proxy.inject(key_is("PUT", "/model.tar.gz"), "reset", "500"),
        proxy.inject(key_is("PUT", "/manifest.json"), "503", "reset"),
        proxy.inject(key_is("GET", "/manifest.json"), "500"),
        proxy.inject(key_is("PUT", "/latest.json"), "503"),
        proxy.inject(key_is("GET", "/model.tar.gz"), "reset", "503"),
    ]
    published = publish_version(store, MODEL, files_for(tmp_path), {"run": "faulty"})
    latest = move_latest(store, MODEL, published.version, reason="through faults")
    verify_version(
        store,
        MODEL,
        published.version,
        tmp_path / "dest",
        expected_manifest_sha256=latest["manifest_sha256"],
    )
    assert all(not r.faults for r in rules), [r.faults for r in rules]  # every fault was hit
    assert sum(len(r.served) for r in rules) == 9
    # Exactly one version, complete, and the pointer and history agree.
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v1"]
    assert promotion_history(store, MODEL)[-1]["seq"] == latest["seq"] == 1


def test_a_permanent_s3_error_fails_with_its_code_and_message(
    s3_store_uri: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    store = store_from_uri(s3_store_uri, endpoint_url=proxy.url)
    rule = proxy.inject(key_is("PUT", "/model.tar.gz"), "denied", permanent=True)
    with pytest.raises(Exception) as err:
        publish_version(store, MODEL, files_for(tmp_path), {"run": "denied"})
    assert "AccessDenied" in str(err.value) and "Access Denied" in str(err.value)
    assert len(rule.served) == 1  # a 403 is not retried
    assert read_latest(store, MODEL) is None


# --- the S3 store's limits and compare-and-swap -------------------------------------------------


def test_s3_download_is_refused_from_its_size_and_if_match_refuses_a_stale_etag(
    s3_store_uri: str, moto_server: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    store = store_from_uri(s3_store_uri, endpoint_url=proxy.url)
    assert isinstance(store, S3Store)
    published = publish_version(store, MODEL, files_for(tmp_path), {"run": "big"})
    listed = published.manifest["files"]["model.tar.gz"]["bytes"]
    store.put_bytes(f"models/{MODEL}/v1/model.tar.gz", b"\0" * (8 << 20))  # swapped, 8 MiB
    before = proxy.forwarded
    with pytest.raises(PublishError, match="does not match the manifest"):
        verify_version(store, MODEL, "v1", tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.tar.gz").exists()
    assert listed < 8 << 20 and proxy.forwarded - before <= 3  # manifest, metrics, one GET

    key = f"models/{MODEL}/latest.json"
    store.put_bytes(key, b'{"seq": 1}')
    _, etag = store.get_tagged(key)
    store.put_bytes(key, b'{"seq": 2}', if_match=etag)
    with pytest.raises(PreconditionFailed, match="changed since it was read"):
        store.put_bytes(key, b'{"seq": 3}', if_match=etag)
    assert json.loads(store.get_bytes(key)) == {"seq": 2}


# --- transient and permanent SageMaker faults ---------------------------------------------------


def _target_through(proxy: FaultProxy, env: dict[str, Any], monkeypatch: Any) -> SageMakerTarget:
    """The target as ``from_settings`` builds it (standard retries), its clients on the proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("MLOPS_SERVING_IMAGE", IMAGE)
    return SageMakerTarget.from_settings(
        load_settings(), env["platform"], poll_seconds=0.01, timeout_seconds=5.0
    )


def test_transient_sagemaker_faults_are_retried_and_the_deploy_succeeds(
    env: dict[str, Any], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _target_through(proxy, env, monkeypatch)
    rules = [
        proxy.inject(sagemaker_action("CreateModel"), "throttle", "500"),
        proxy.inject(sagemaker_action("CreateEndpointConfig"), "reset"),
        proxy.inject(sagemaker_action("CreateEndpoint"), "throttle", "503"),
        proxy.inject(sagemaker_action("DescribeEndpoint"), "reset"),
    ]
    v1 = version(env, 1)
    serving = target.deploy(v1, Log())
    assert serving.version == "v1" and serving.status == "InService"
    assert all(not r.faults for r in rules), [r.faults for r in rules]


def test_a_permanent_sagemaker_error_fails_the_deploy_with_its_code_and_message(
    env: dict[str, Any], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _target_through(proxy, env, monkeypatch)
    proxy.inject(sagemaker_action("CreateModel"), "denied-json", permanent=True)
    with pytest.raises(RolloutFailed) as err:
        target.deploy(version(env, 1), Log())
    message = str(err.value)
    assert "AccessDeniedException: User is not authorized to perform sagemaker:CreateModel" in (
        message
    )
    assert "Traceback" not in message


def test_a_new_role_still_propagating_is_waited_for_before_create_model_succeeds(
    env: dict[str, Any], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IAM is eventually consistent: SageMaker refuses a role created seconds ago."""
    target = _target_through(proxy, env, monkeypatch)
    assert target.role_arn is None  # the deploy creates the project's role
    rule = proxy.inject(sagemaker_action("CreateModel"), "role-propagating", "role-propagating")
    log = Log()
    serving = target.deploy(version(env, 1), log)
    assert serving.version == "v1"
    assert rule.served == ["role-propagating", "role-propagating"] and not rule.faults


# --- a rollout killed midway --------------------------------------------------------------------

ROLLOUT_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from adapters.endpoints.local.router_control import RouterControl

    def dying_write(self, *args, **kwargs):
        # The new variant answers /ping; the route still names the champion's.
        os.kill(os.getpid(), signal.SIGKILL)

    RouterControl.write = dying_write
    from cli import main

    sys.argv = ["mlops", "retrain", "-m", "limit_optimiser", "--force", "--reason", "killed"]
    main()
    """
)


def test_a_rollout_killed_midway_leaves_the_champion_serving_and_the_next_run_completes(
    tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrain's rollout (local endpoint, real processes) SIGKILLed after its new variant started.

    The champion's route, ``latest.json`` and the ``champion`` alias still name v1, v1 answers
    requests, and the next retrain completes (v3 serves everywhere) without repair.
    """
    from prefect.settings import get_current_settings

    from adapters.endpoints.local import LocalTarget
    from adapters.endpoints.local.processes import free_port
    from adapters.pointer import read_latest
    from adapters.store import store_from_settings
    from cli.status import status_of
    from core.config import load_platform_config
    from flows.retrain import retrain
    from tests.fixtures.home import SMALL_SOURCE, champion, isolated_env, project_configs
    from tests.fixtures.serving import our_processes

    model = "limit_optimiser"
    home = isolated_env(monkeypatch, tmp_path / "home", endpoint_target="local")
    monkeypatch.setenv("MLOPS_ENDPOINT_PORT", str(free_port()))
    monkeypatch.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
    configs = project_configs(monkeypatch, tmp_path / "configs")
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    target = LocalTarget.from_settings(settings, load_platform_config(configs))

    def served() -> str | None:
        import httpx

        store = store_from_settings(settings)
        schema = json.loads(store.get_bytes(f"models/{model}/v1/schema.json"))
        with httpx.Client(trust_env=False, timeout=30) as client:
            answer = client.post(
                target.address(model), json={"instances": schema["example_request"]}
            )
        assert answer.status_code == 200, answer.text
        return answer.headers.get("x-model-version")

    try:
        assert retrain(models=[model], reason="first", return_state=True).is_completed()
        assert served() == "v1"
        done = subprocess.run(
            [sys.executable, "-c", ROLLOUT_KILLER],
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == -9, done.stdout + done.stderr
        assert "deploying v2" in done.stdout + done.stderr  # killed inside the rollout
        # v2 was published, never promoted; v1 still serves, and pointer and alias name it.
        store = store_from_settings(settings)
        assert (read_latest(store, model) or {}).get("version") == "v1"
        assert champion(settings, model) == ("v1", "v1")
        assert served() == "v1"
        # The killed run's v2 variant is left running, unrouted: cleanup lists it as deletable.
        stray = [r for r in target.resources() if r.kind == "model" and r.version == "v2"]
        assert [r.in_use for r in stray] == [False], stray
        (row,) = status_of(settings, [model])
        assert (row["latest_version"], row.get("endpoint_version"), row["agree"]) == (
            "v1",
            "v1",
            True,
        )

        # The next run completes without repair, and serves everywhere.
        state = retrain(models=[model], force=True, reason="after the kill", return_state=True)
        assert state.is_completed(), state.message
        assert state.result()["models"][0]["version"] == "v3"
        assert champion(settings, model) == ("v3", "v3")
        (row,) = status_of(settings, [model])
        assert (row["endpoint_version"], row["agree"]) == ("v3", True)
    finally:
        target.stop()
        for pid in our_processes(home):  # the killed run's variant included
            os.kill(pid, signal.SIGKILL)
