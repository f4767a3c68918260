"""The images of ``docker/``, built with buildah and run as SageMaker runs them.

Built once per session by :func:`tests.fixtures.images.built_images` (``make image``), from the
same Dockerfiles ``docker build`` takes, on a Debian base made here with debootstrap. Each test
runs the image's own entry point under ``buildah run`` (:class:`tests.fixtures.images.Container`):

* serving: ``serve``, ``model.tar.gz`` unpacked under ``/opt/ml/model``, ``SAGEMAKER_BIND_TO_PORT``;
  ``/ping``, ``/invocations`` with JSON and CSV, ``/execution-parameters``, a malformed request,
  a tampered model; each family's answers equal those of the local endpoint's process
  (``python -m serving serve`` from the checkout) on the same model;
* training: ``train`` with SageMaker's ``/opt/ml/input/config/*.json`` and
  ``/opt/ml/input/data/train/``; what it writes to ``/opt/ml/model``, packed as SageMaker packs
  ``model.tar.gz``, holds the same bytes as the family trained in this process;
* the flow runner: ``check`` imports every flow and loads every config inside the image.

What this does not prove: that SageMaker or ECS pull the image from ECR and start it (no
registry here), the instance's resources, or a read-only root filesystem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.endpoints.local.processes import free_port
from adapters.package import make_tarball
from adapters.training.container import encode_hyperparameters
from core.families import get_family
from core.settings import PROJECT_ROOT
from tests.fixtures.images import (
    IMAGE_UID,
    Container,
    Image,
    ServingContainer,
    readable_by_all,
    serve,
    unpack,
)
from tests.fixtures.serving import TinyModel, build_model_dir, small_params, training_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

FAMILIES = ("abuse_detector", "limit_optimiser", "traffic_forecaster")


def _env(tiny: TinyModel, version: str = "v7") -> dict[str, str]:
    """The container environment the SageMaker target sets on the model."""
    return {
        "MLOPS_MODEL_NAME": tiny.family,
        "MLOPS_MODEL_VERSION": version,
        "MLOPS_MODEL_CONTENTS_SHA256": tiny.contents_sha256,
    }


def _sagemaker_model_dir(tiny: TinyModel, where: Path) -> Path:
    """``model.tar.gz`` as the pipeline publishes it, unpacked as SageMaker does."""
    tarball = make_tarball(tiny.model_dir, where / "model.tar.gz")
    return unpack(tarball, where / "opt-ml-model")


@pytest.fixture
def local_process() -> Iterator[Any]:
    """Start the local endpoint's serving process (the checkout's venv) on a model."""
    started: list[subprocess.Popen[bytes]] = []

    def start(model_dir: Path, env: dict[str, str]) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "serve"],
            cwd=PROJECT_ROOT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")},
                **env,
                "MLOPS_MODEL_DIR": str(model_dir),
                "SAGEMAKER_BIND_TO_PORT": str(port),
                "MPLBACKEND": "Agg",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        _await_ping(proc, url)
        return url

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _await_ping(proc: subprocess.Popen[bytes], url: str) -> None:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the local serving process exited"
        try:
            if httpx.get(f"{url}/ping", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url}/ping did not answer 200")


def _post(url: str, body: bytes, content_type: str, accept: str = "application/json") -> Any:
    return httpx.post(
        f"{url}/invocations",
        content=body,
        headers={"Content-Type": content_type, "Accept": accept},
        timeout=60,
        trust_env=False,
    )


def _csv(records: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


# --- serving ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_serving_image_answers_as_the_local_endpoint(
    family: str, built_images: dict[str, Image], local_process: Any, tmp_path: Path
) -> None:
    tiny = build_model_dir(family, tmp_path / "model")
    model_dir = _sagemaker_model_dir(tiny, tmp_path / "sagemaker")
    image: ServingContainer = serve(built_images["serving"].ref, model_dir, _env(tiny))
    try:
        local = local_process(tiny.model_dir, _env(tiny))
        ping = httpx.get(f"{image.url}/ping", timeout=10, trust_env=False).json()
        assert (ping["model"], ping["version"], ping["family"]) == (family, "v7", family)

        body = json.dumps({"instances": tiny.example_request}).encode()
        from_image = _post(image.url, body, "application/json")
        from_local = _post(local, body, "application/json")
        assert from_image.status_code == 200, from_image.text
        answer = from_image.json()
        assert len(answer["predictions"]) == len(tiny.example_request)
        assert answer == from_local.json()  # same libraries, same bytes: the same numbers

        as_csv = _csv(tiny.example_request)
        csv_image = _post(image.url, as_csv, "text/csv", accept="text/csv")
        csv_local = _post(local, as_csv, "text/csv", accept="text/csv")
        assert csv_image.status_code == 200, csv_image.text
        assert csv_image.text == csv_local.text
        assert len(csv_image.text.strip().splitlines()) == len(tiny.example_request) + 1

        params = httpx.get(f"{image.url}/execution-parameters", timeout=10, trust_env=False)
        assert params.status_code == 200 and params.json()["MaxPayloadInMB"] >= 1

        broken = _post(image.url, b"{not json", "application/json")
        assert broken.status_code == 400 and "not valid JSON" in broken.text
    finally:
        image.container.stop()


def test_serving_image_refuses_a_tampered_model(
    built_images: dict[str, Image], tmp_path: Path
) -> None:
    tiny = build_model_dir("limit_optimiser", tmp_path / "model")
    model_dir = _sagemaker_model_dir(tiny, tmp_path / "sagemaker")
    victim = max(model_dir.iterdir(), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    image = serve(built_images["serving"].ref, model_dir, _env(tiny), want=503)
    try:
        ping = httpx.get(f"{image.url}/ping", timeout=10, trust_env=False)
        assert ping.status_code == 503 and victim.name in ping.text, ping.text
        refused = _post(image.url, json.dumps(tiny.example_request).encode(), "application/json")
        assert refused.status_code == 503, refused.text
    finally:
        image.container.stop()


def test_serving_image_stops_on_sigterm_and_runs_as_non_root(
    built_images: dict[str, Image], tmp_path: Path
) -> None:
    tiny = build_model_dir("abuse_detector", tmp_path / "model")
    model_dir = _sagemaker_model_dir(tiny, tmp_path / "sagemaker")
    image = serve(built_images["serving"].ref, model_dir, _env(tiny))
    try:
        pid = httpx.get(f"{image.url}/ping", timeout=10, trust_env=False).json()["pid"]
        assert os.stat(f"/proc/{pid}").st_uid == IMAGE_UID
    finally:
        image.container.stop(grace=60)
    assert image.container._proc is not None
    # tini forwarded SIGTERM: uvicorn shut down by itself (and, as uvicorn does, re-raised the
    # signal: exit 128 + 15), nothing was killed.
    assert image.container._proc.returncode == 143, image.container.output()[-2000:]
    assert "Finished server process" in image.container.output()
    assert not Path(f"/proc/{pid}").exists()


# --- training -----------------------------------------------------------------------------------


def _training_layout(root: Path, family: str) -> None:
    """SageMaker's ``/opt/ml`` for a job of ``family`` on the fixtures' training frame."""
    if os.geteuid() != 0:
        pytest.skip("the image's user (uid 10001) must own /opt/ml/model: needs root to chown")
    cfg = root / "input" / "config"
    data = root / "input" / "data" / "train"
    for directory in (cfg, data, root / "model", root / "output"):
        directory.mkdir(parents=True)
    params = small_params(family).model_dump(mode="json")
    (cfg / "hyperparameters.json").write_text(
        json.dumps(encode_hyperparameters(family, family, params, seed=7))
    )
    (cfg / "resourceconfig.json").write_text(
        json.dumps(
            {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
        )
    )
    (cfg / "inputdataconfig.json").write_text(
        json.dumps({"train": {"ContentType": "application/x-parquet", "TrainingInputMode": "File"}})
    )
    training_frame(family).to_parquet(data / "part-00000.parquet", index=False)
    readable_by_all(root)
    # SageMaker's agent owns these; the image's user must be able to write them.
    for directory in (root / "model", root / "output"):
        os.chown(directory, IMAGE_UID, IMAGE_UID)


def _tar_members(tarball: Path) -> dict[str, str]:
    with tarfile.open(tarball) as tar:
        return {
            m.name.removeprefix("./"): hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


@pytest.mark.parametrize("family", FAMILIES)
def test_training_image_writes_the_model_the_flow_trains(
    family: str, built_images: dict[str, Image], tmp_path: Path
) -> None:
    root = tmp_path / "opt-ml"
    _training_layout(root, family)
    job = Container(built_images["serving"].ref, ["train"], volumes={root: "/opt/ml"}).start()
    try:
        status = job.wait(timeout=900)
    finally:
        job.stop()
    assert status == 0, job.output()[-3000:]
    assert not (root / "output" / "failure").exists()
    # SageMaker packs /opt/ml/model into model.tar.gz; so does this, with plain tar.
    packed = tmp_path / "model.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(root / "model", arcname=".")

    in_process = tmp_path / "in-process"
    in_process.mkdir()
    impl = get_family(family)
    impl.save(impl.train(training_frame(family), small_params(family), 7), in_process)
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in in_process.iterdir()}
    assert _tar_members(packed) == expected


def test_training_image_reports_a_broken_channel(
    built_images: dict[str, Image], tmp_path: Path
) -> None:
    root = tmp_path / "opt-ml"
    _training_layout(root, "limit_optimiser")
    (root / "input" / "data" / "train" / "part-00000.parquet").unlink()
    os.chown(root / "output", IMAGE_UID, IMAGE_UID)
    job = Container(built_images["serving"].ref, ["train"], volumes={root: "/opt/ml"}).start()
    try:
        status = job.wait(timeout=300)
    finally:
        job.stop()
    assert status == 1
    assert "no *.parquet file" in (root / "output" / "failure").read_text()
    assert list((root / "model").iterdir()) == []


# --- the flow runner ----------------------------------------------------------------------------


def test_flow_runner_image_imports_every_flow_and_config(
    built_images: dict[str, Image], tmp_path: Path
) -> None:
    check = Container(built_images["flow-runner"].ref, ["check"]).start()
    try:
        status = check.wait(timeout=300)
    finally:
        check.stop()
    assert status == 0, check.output()[-3000:]
    report = json.loads(check.output().strip().splitlines()[-1])
    assert report["python"].startswith("3.11.")
    assert sorted(report["models"]) == sorted(FAMILIES)
    assert report["home"] == "/var/lib/mlops"
