"""Retrain, rollout, smoke test and rollback on SageMaker (moto), answered by the serving image.

The world of ``test_sagemaker_flow`` (S3 store and SageMaker on moto server, MLflow, a Prefect
API), with one difference: every ``InvokeEndpoint`` is forwarded to a process of the serving
image built with buildah (:class:`tests.fixtures.images.ContainerPool`), started with the
``ModelDataUrl`` the SageMaker model names, downloaded from moto's S3 and unpacked under
``/opt/ml/model``, and the model's container environment. So the rollout's smoke test checks a
real model's answer, and a model that cannot load fails it the way it would on SageMaker.

What this does not prove: SageMaker pulling the image from ECR, its instance start-up and health
checks, or its traffic shifting (the simulated states of :mod:`tests.fixtures.sagemaker_moto`).
"""

from __future__ import annotations

import json

import pytest

from adapters.pointer import read_latest
from adapters.source import seed_source
from adapters.store import store_from_settings
from tests.fixtures.images import ContainerPool
from tests.fixtures.moto import boto_client
from tests.integration.test_sagemaker_flow import (  # the same world, fixture included
    MODEL,
    World,
    assert_all_agree_on,
    run_retrain,
    serving,
    world,
)

__all__ = ["world"]

# The image build (once per session) may happen here: a cold one takes minutes on a loaded VM.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def _invoke(world: World, records: list[dict[str, object]]) -> dict[str, object]:
    body = boto_client("sagemaker-runtime", world.url).invoke_endpoint(
        EndpointName=world.endpoint,
        ContentType="application/json",
        Body=json.dumps({"instances": records}).encode(),
    )["Body"]
    return dict(json.loads(body.read()))


def test_rollout_smoke_test_and_rollback_against_the_serving_image(
    world: World, container_pool: ContainerPool
) -> None:
    world.sim.serve_with(container_pool.url_for)

    # 1. The first retrain creates the endpoint; the image serves v1's published model.
    state, line = run_retrain(force=False, reason="first")
    assert state.is_completed(), line
    assert (line["status"], line["version"]) == ("promoted", "v1")
    assert_all_agree_on(world, "v1")
    assert len(container_pool.started) == 1
    schema = json.loads(
        store_from_settings(world.settings).get_bytes(f"models/{MODEL}/v1/schema.json")
    )
    records = schema["example_request"]
    answer = _invoke(world, records)
    assert (answer["model"], answer["version"]) == (MODEL, "v1")
    predictions = answer["predictions"]
    assert isinstance(predictions, list) and len(predictions) == len(records)
    # A real model's answer: a recommended limit per client, not the fake's canned numbers.
    limits = [p["recommended_limit"] for p in predictions]
    assert all(isinstance(x, float) and x > 0 for x in limits) and len(set(limits)) > 1

    # 2. v2's copy on the instance is corrupted: the image refuses to load it, its answers are
    #    errors, the smoke test fails, and v1 serves again with pointer and alias unchanged.
    seed_source(world.settings.source_url, seed=7, n_clients=40, n_services=2)
    container_pool.corrupt_next = True
    state, line = run_retrain(force=True, reason="corrupted copy")
    assert state.is_failed()
    assert (line["status"], line["version"]) == ("failed", "v2")
    assert "smoke-test" in line["note"] and "v1 serves again" in line["note"], line["note"]
    assert "ModelError" in line["note"] and "503" in line["note"], line["note"]
    assert len(container_pool.started) == 2
    assert serving(world)[0::2] == ("InService", "v1")
    assert_all_agree_on(world, "v1")
    assert (read_latest(store_from_settings(world.settings), MODEL) or {})["version"] == "v1"
    again = _invoke(world, records)
    assert again["version"] == "v1" and again["predictions"] == predictions
