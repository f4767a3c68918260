"""The retrain, rollout, rollback and cleanup flows against SageMaker on moto server, end to end.

Everything a user's run touches is real here except SageMaker's data plane: the store is S3 on
moto server over HTTP, MLflow a SQLite file, Prefect a temporary API, and SageMaker moto's,
extended by :mod:`tests.fixtures.sagemaker_moto` (status transitions, ``UpdateEndpoint``,
injected failures, answers naming the version served). The target is the one the flows build
from the environment (``MLOPS_ENDPOINT_TARGET=sagemaker``), only polling faster.

One story test runs these steps in order on one world, each starting from the state the
previous one left and saying what it changed (building that state takes several retrains):

1. the first retrain creates the endpoint serving v1;
2. new data and a forced retrain promote v2 by *updating* the endpoint;
3. an update SageMaker rolls back by itself (v3) changes nothing and leaves nothing;
4. a smoke test answering an error (v4) puts v2 back and leaves nothing;
5. ``rollback`` serves v1 again, and a manual ``rollout`` serves v4;
6. cleanup: a dry run deletes nothing; apply deletes exactly the plan, nothing in use.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.endpoints.sagemaker.names import endpoint_name
from adapters.pointer import promotion_history, read_latest
from adapters.registry import Registry
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.versions import list_versions
from cli.status import status_of
from core.settings import Settings, load_settings
from flows.cleanup import cleanup
from flows.retrain import retrain
from flows.rollout import rollback, rollout
from tests.fixtures.home import SMALL_SOURCE, champion, isolated_env, project_configs
from tests.fixtures.moto import boto_client, make_store_bucket, use_moto_env
from tests.fixtures.sagemaker_moto import SageMakerSim, install, tagged_names

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/intelli-rate-serving:1.0"


@dataclass
class World:
    """The module's shared state: settings, the simulated SageMaker and the project tag."""

    settings: Settings
    sim: SageMakerSim
    tag: str
    bucket: str
    url: str

    @property
    def endpoint(self) -> str:
        return endpoint_name(self.tag, MODEL)


@pytest.fixture
def world(
    moto_server: str,
    prefect_api: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    """S3 store and SageMaker on moto, a project tag of this test's own, seeded source."""
    isolated_env(monkeypatch, tmp_path / "home", endpoint_target="sagemaker")
    use_moto_env(monkeypatch, moto_server)
    bucket = f"mlops-flow-{uuid.uuid4().hex[:12]}"
    make_store_bucket(moto_server, bucket)
    # A tag of its own keeps this test's resources apart from other tests' on the server.
    tag = f"f{uuid.uuid4().hex[:8]}"
    edits = {
        "platform.yaml": {
            "keep_last: 3": "keep_last: 1",
            "project_tag: intelli-rate": f"project_tag: {tag}",
        },
        f"models/{MODEL}.yaml": {"timeout_seconds: 1800": "timeout_seconds: 10"},
    }
    project_configs(monkeypatch, tmp_path / "configs", edits)
    monkeypatch.setenv("MLOPS_STORE_URI", f"s3://{bucket}/store")
    monkeypatch.setenv("MLOPS_SERVING_IMAGE", IMAGE)

    sim = SageMakerSim()
    install(sim, monkeypatch)
    # SageMaker is polled every 15 s; the simulated states take sim.settle_after polls each.
    monkeypatch.setenv("MLOPS_SAGEMAKER_POLL_SECONDS", "0.01")

    settings = load_settings()
    assert settings.resolved_endpoint_target == "sagemaker"
    assert settings.store == f"s3://{bucket}/store"
    seed_source(settings.source_url, weeks=8, **SMALL_SOURCE)
    return World(settings, sim, tag, bucket, moto_server)


# --- helpers ------------------------------------------------------------------------------------


def sm(world: World) -> Any:
    return boto_client("sagemaker", world.url)


def endpoints(world: World) -> list[str]:
    return tagged_names(sm(world), "endpoint", world.tag)


def configs(world: World) -> set[str]:
    return set(tagged_names(sm(world), "endpoint-config", world.tag))


def models(world: World) -> set[str]:
    return set(tagged_names(sm(world), "model", world.tag))


def footprint(world: World) -> tuple[set[str], set[str], list[dict[str, Any]]]:
    """(endpoint configs, models, promotion history): what a failed rollout leaves as it was."""
    return (
        configs(world),
        models(world),
        promotion_history(store_from_settings(world.settings), MODEL),
    )


def version_of_config(world: World, config: str) -> str:
    """The version a config serves, read from its model's container (not from our tags)."""
    client = sm(world)
    variant = client.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    model = client.describe_model(ModelName=variant["ModelName"])
    return str(model["PrimaryContainer"]["Environment"]["MLOPS_MODEL_VERSION"])


def serving(world: World) -> tuple[str, str, str]:
    """(status, config, version) of the endpoint as SageMaker describes it."""
    desc = sm(world).describe_endpoint(EndpointName=world.endpoint)
    config = desc["EndpointConfigName"]
    return desc["EndpointStatus"], config, version_of_config(world, config)


def status_row(world: World) -> dict[str, Any]:
    (row,) = status_of(world.settings, [MODEL])
    return row


def assert_all_agree_on(world: World, version: str) -> None:
    """latest.json, the champion alias, the endpoint and model_status all say ``version``."""
    assert champion(world.settings, MODEL) == (version, version)
    status, _, served = serving(world)
    assert (status, served) == ("InService", version)
    row = status_row(world)
    assert row["agree"], row.get("problem")
    assert row["endpoint_target"] == "sagemaker"
    assert (row["latest_version"], row["champion_store_version"]) == (version, version)
    assert row["endpoint_version"] == version and row["endpoint"]["status"] == "InService"


def run_retrain(force: bool, reason: str) -> tuple[Any, dict[str, Any]]:
    """Retrain the one model; return the run's state and the model's summary line."""
    state = retrain(models=[MODEL], force=force, reason=reason, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, dict), summary
    (line,) = summary["models"]
    return state, line


def answer(world: World) -> dict[str, Any]:
    """Invoke the endpoint as a client would; the simulated container names its version."""
    body = boto_client("sagemaker-runtime", world.url).invoke_endpoint(
        EndpointName=world.endpoint,
        ContentType="application/json",
        Body=json.dumps({"instances": [{"client_id": "c1"}]}).encode(),
    )["Body"]
    return dict(json.loads(body.read()))


# --- the path -----------------------------------------------------------------------------------


def test_retrain_rollout_rollback_and_cleanup_on_sagemaker(world: World) -> None:
    """The steps of the module's docstring, in order, on one world."""
    first_retrain_creates_the_endpoint_serving_v1(world)
    new_data_and_a_forced_retrain_update_the_endpoint_to_v2(world)
    an_update_sagemaker_rolls_back_changes_nothing_and_leaves_nothing(world)
    a_smoke_test_error_puts_v2_back_and_leaves_nothing(world)
    an_update_that_fails_outright_is_recovered_by_recreating_v2(world)
    rollback_serves_v1_again_then_a_manual_rollout_serves_v4(world)
    cleanup_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(world)


def first_retrain_creates_the_endpoint_serving_v1(world: World) -> None:
    """Nothing before; leaves v1 serving everywhere."""
    sim = world.sim
    state, line = run_retrain(force=False, reason="first")
    assert state.is_completed(), line
    assert (line["status"], line["version"]) == ("promoted", "v1")

    assert [n for n, _ in sim.actions("CreateEndpoint")] == [world.endpoint]
    assert sim.actions("UpdateEndpoint") == []
    assert endpoints(world) == [world.endpoint]
    status, config, version = serving(world)
    assert (status, version) == ("InService", "v1")
    assert len(configs(world)) == 1 and len(models(world)) == 1

    # The model reads the published tarball from the S3 store, which holds it.
    client = sm(world)
    variant = client.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    container = client.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    key = f"store/models/{MODEL}/v1/model.tar.gz"
    assert container["ModelDataUrl"] == f"s3://{world.bucket}/{key}"
    assert container["Image"] == IMAGE
    boto_client("s3", world.url).head_object(Bucket=world.bucket, Key=key)

    # The smoke test sent the example request of schema.json before the pointer moved.
    assert [name for name, _ in sim.invocations] == [world.endpoint]
    assert sim.invocations[0][1]["instances"]
    latest = read_latest(store_from_settings(world.settings), MODEL) or {}
    assert latest["endpoint"] == world.endpoint and latest["endpoint_config"] == config
    assert_all_agree_on(world, "v1")
    assert answer(world)["version"] == "v1"


def new_data_and_a_forced_retrain_update_the_endpoint_to_v2(world: World) -> None:
    """Leaves v2 serving, v1's config and model kept."""
    sim = world.sim
    (v1_config,) = configs(world)
    seed_source(world.settings.source_url, seed=7, n_clients=40, n_services=2)
    state, line = run_retrain(force=True, reason="new week")
    assert state.is_completed(), line
    assert (line["status"], line["version"]) == ("promoted", "v2")

    # Updated in place, blue/green as the config says, not created again.
    assert len(sim.actions("CreateEndpoint")) == 1
    [(name, update)] = sim.actions("UpdateEndpoint")
    assert name == world.endpoint
    routing = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == "LINEAR"
    status, v2_config, version = serving(world)
    assert (status, version) == ("InService", "v2") and v2_config != v1_config
    assert update["EndpointConfigName"] == v2_config
    # v1's config and model stay: they are the rollback target's.
    assert configs(world) == {v1_config, v2_config} and len(models(world)) == 2
    assert (read_latest(store_from_settings(world.settings), MODEL) or {})["previous"] == "v1"
    assert_all_agree_on(world, "v2")
    assert answer(world)["version"] == "v2"


def an_update_sagemaker_rolls_back_changes_nothing_and_leaves_nothing(world: World) -> None:
    """Publishes v3, which never serves; leaves v2 serving."""
    sim = world.sim
    store = store_from_settings(world.settings)
    before = footprint(world)
    sim.roll_back_next_update("Alarm 5xx fired during the linear traffic shift")

    state, line = run_retrain(force=True, reason="bad update")
    assert state.is_failed()
    assert (line["status"], line["version"]) == ("failed", "v3")
    assert "rolled back" in line["note"] and "Alarm 5xx" in line["note"]

    # v3 is published (the store keeps it) but is not the champion anywhere.
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v1", "v2", "v3"]
    assert_all_agree_on(world, "v2")
    assert promotion_history(store, MODEL) == before[2]
    # The attempt's config and model were created, then deleted: nothing of v3 is left.
    [(v3_config, _)] = sim.actions("CreateEndpointConfig")[-1:]
    assert "-v3-" in v3_config
    assert (configs(world), models(world)) == before[:2]
    assert answer(world)["version"] == "v2"


def a_smoke_test_error_puts_v2_back_and_leaves_nothing(world: World) -> None:
    """Publishes v4, which serves for a moment; leaves v2 serving."""
    sim = world.sim
    store = store_from_settings(world.settings)
    before = footprint(world)
    updates = len(sim.actions("UpdateEndpoint"))
    sim.answer_error(world.endpoint, 500, "model failed to load: bad weights")
    try:
        state, line = run_retrain(force=True, reason="bad model")
    finally:
        sim.clear_answer(world.endpoint)
    assert state.is_failed()
    assert (line["status"], line["version"]) == ("failed", "v4")
    assert "smoke-test" in line["note"] and "bad weights" in line["note"]
    assert "v2 serves again" in line["note"]

    # Updated to v4, which answered errors, then back to v2's config.
    moves = [p["EndpointConfigName"] for _, p in sim.actions("UpdateEndpoint")[updates:]]
    assert len(moves) == 2 and "-v4-" in moves[0] and moves[1] in before[0]
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v1", "v2", "v3", "v4"]
    assert_all_agree_on(world, "v2")
    assert promotion_history(store, MODEL) == before[2]
    # v4's config and model, which served for a moment, are gone.
    assert (configs(world), models(world)) == before[:2]


def an_update_that_fails_outright_is_recovered_by_recreating_v2(world: World) -> None:
    """Leaves v2 serving on a recreated endpoint."""
    sim = world.sim
    store = store_from_settings(world.settings)
    before = footprint(world)
    v2_config = serving(world)[1]
    sim.fail_next_update("Rollback failed: the old fleet could not be restored")

    # A person serves the published v3 by hand; SageMaker leaves the endpoint Failed.
    state = rollout(MODEL, "v3", reason="by hand", return_state=True)
    assert state.is_failed()
    message = str(state.message)
    assert "ended Failed" in message and "old fleet could not be restored" in message
    # A Failed endpoint serves nothing, whatever config it names: it was recreated on v2.
    assert "v2 serves again" in message
    assert [n for n, _ in sim.actions("DeleteEndpoint")] == [world.endpoint]
    assert [n for n, _ in sim.actions("CreateEndpoint")] == [world.endpoint, world.endpoint]
    assert serving(world)[1] == v2_config
    assert_all_agree_on(world, "v2")
    assert promotion_history(store, MODEL) == before[2]
    assert (configs(world), models(world)) == before[:2]
    assert answer(world)["version"] == "v2"

    # Had it stayed Failed, status would say so instead of agreeing on the config's version.
    endpoint = sim.backend.endpoints[world.endpoint]
    endpoint.endpoint_status = "Failed"
    try:
        row = status_row(world)
    finally:
        endpoint.endpoint_status = "InService"
    assert not row["agree"] and row["endpoint_version"] is None
    assert "Failed and serves no version" in row["problem"]


def rollback_serves_v1_again_then_a_manual_rollout_serves_v4(world: World) -> None:
    """Leaves v4 serving, v1 its rollback target."""
    sim = world.sim
    store = store_from_settings(world.settings)
    v1_config = next(c for c in configs(world) if "-v1-" in c)
    created = len(sim.actions("CreateEndpointConfig"))

    state = rollback(MODEL, return_state=True)
    assert state.is_completed(), state.message
    assert_all_agree_on(world, "v1")
    # Back on v1's own config: found and reused, not made again.
    assert serving(world)[1] == v1_config
    assert len(configs(world)) == 2 and len(models(world)) == 2
    history = promotion_history(store, MODEL)
    assert history[-1]["version"] == "v1" and "from v2 to v1" in history[-1]["reason"]
    # v2 was rolled back from: no later rollback returns to it (v1 is the oldest version).
    assert history[-1]["rolled_back_from"] == "v2"
    assert status_row(world)["rollback"].endswith("--to vN")
    assert answer(world)["version"] == "v1"

    # v4 was published but never promoted; serving it by hand works once it answers.
    state = rollout(MODEL, "v4", reason="by hand", return_state=True)
    assert state.is_completed(), state.message
    assert_all_agree_on(world, "v4")
    assert len(sim.actions("CreateEndpointConfig")) >= created + 1
    assert (read_latest(store, MODEL) or {})["previous"] == "v1"
    assert answer(world)["version"] == "v4"


def cleanup_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(world: World) -> None:
    """Deletes v2 and v3; ends with v1 serving again."""
    sim = world.sim
    settings = world.settings
    store = store_from_settings(settings)
    by_version = {c.split("-")[-2]: c for c in configs(world)}
    models_by_version = {m.split("-")[-2]: m for m in models(world)}
    assert set(by_version) == set(models_by_version) == {"v1", "v2", "v4"}
    start = len(sim.calls)

    # Every configured model, as `mlops cleanup --clean-s3` does: the other two were never
    # trained here, and have nothing to plan.
    dry = cleanup(clean_store=True)
    assert {p["model"] for p in dry["plan"]} == {MODEL}
    planned = {(p["kind"], p["name"]) for p in dry["plan"] if p["action"] == "delete"}
    # keep_last 1: v4 is the champion and newest, v1 the rollback target; v2 serves nothing and
    # v3 never served. The endpoint serves a configured model and is kept.
    assert planned == {
        ("endpoint-config", by_version["v2"]),
        ("model", models_by_version["v2"]),
        ("store-version", f"{MODEL}/v2"),
        ("store-version", f"{MODEL}/v3"),
        ("registry-version", f"{MODEL}/2"),
        ("registry-version", f"{MODEL}/3"),
    }
    kept = {(p["kind"], p["name"]): p["reason"] for p in dry["plan"] if p["action"] == "keep"}
    assert ("endpoint", world.endpoint) in kept
    assert kept[("endpoint-config", by_version["v4"])] == "used by a live endpoint"
    assert kept[("model", models_by_version["v1"])] == "rollback target"
    assert dry["done"] == [] and not dry["applied"]
    # A dry run deletes nothing (nor creates or updates anything).
    assert sim.calls[start:] == []
    assert set(configs(world)) == set(by_version.values())
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v1", "v2", "v3", "v4"]

    done = cleanup(clean_store=True, apply=True)
    assert {(d["kind"], d["name"]) for d in done["done"]} == planned
    assert all(d["outcome"] == "deleted" for d in done["done"]), done["done"]
    # Exactly the planned SageMaker deletions, and nothing else was asked of SageMaker.
    assert sorted((a, n) for a, n, _ in sim.calls[start:]) == [
        ("DeleteEndpointConfig", by_version["v2"]),
        ("DeleteModel", models_by_version["v2"]),
    ]
    assert endpoints(world) == [world.endpoint]
    assert configs(world) == {by_version["v1"], by_version["v4"]}
    assert models(world) == {models_by_version["v1"], models_by_version["v4"]}
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v1", "v4"]
    versions = [r["version"] for r in Registry.from_settings(settings).list_versions(MODEL)]
    assert versions == ["1", "4"]
    assert_all_agree_on(world, "v4")
    assert answer(world)["version"] == "v4"

    # What was kept is enough to roll back.
    state = rollback(MODEL, return_state=True)
    assert state.is_completed(), state.message
    assert_all_agree_on(world, "v1")
