"""Variants of the local endpoint: one serving process on one verified, unpacked version.

Each variant has a directory of its own under ``$MLOPS_HOME/endpoint/variants/``::

    {model}-{version}-{sha8}-{token}/
        model/          the verified, unpacked model.tar.gz (the variant's /opt/ml/model)
        variant.json    what runs there: pid, port, version, hashes
        serve.log       the variant's log

A variant process checks ``contents.json`` against the hash it is given before it loads the
model, so ``/ping`` answers ``failed`` with the reason when the files are not what was published.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.endpoints.local.processes import (
    ServingProcesses,
    free_port,
    http_get,
    is_alive,
    log_tail,
    process_token,
    read_json,
    utc_now,
)
from core.endpoint import Progress, RolloutFailed, VersionToServe

if TYPE_CHECKING:
    import httpx

    from adapters.store import Store

VARIANTS = "variants"
VARIANT_INFO = "variant.json"
VARIANT_LOG = "serve.log"
MODEL_SUBDIR = "model"
METRICS_SUBDIR = "metrics"

_PORT_TAKEN = "address already in use"


def variant_name(target: VersionToServe) -> str:
    """``{model}-{version}-{manifest sha256[:8]}``: what a variant serves, by name."""
    return f"{target.model}-{target.version}-{target.manifest_sha256[:8]}"


def fetch(store: Store, target: VersionToServe, instance: Path, progress: Progress) -> Path:
    """Download and verify the version into ``instance``; unpack its model; return it.

    Raises:
        PublishError: the version is incomplete or a file does not match the manifest.
    """
    from adapters.layout import MODEL_TARBALL
    from adapters.package import extract_tarball
    from adapters.versions import verify_version

    download = instance / "download"
    # The manifest the rollout checked against the recorded hashes, not whatever the store
    # holds by now: a rewrite between the check and this download is refused.
    verify_version(
        store,
        target.model,
        target.version,
        download,
        expected_manifest_sha256=target.manifest_sha256,
    )
    model_dir = extract_tarball(download / MODEL_TARBALL, instance / MODEL_SUBDIR)
    shutil.rmtree(download, ignore_errors=True)
    progress(f"{target.model} {target.version}: downloaded, verified and unpacked")
    return model_dir


class _PortTaken(Exception):
    """The variant could not bind its port (someone took it meanwhile): try another."""


class Variants:
    """The variant directories and processes of one local endpoint.

    Args:
        directory: ``$MLOPS_HOME/endpoint/variants``.
        processes: starts and stops the variant processes.
    """

    def __init__(self, directory: Path, processes: ServingProcesses) -> None:
        self.directory = directory
        self.processes = processes

    def create(self, target: VersionToServe) -> Path:
        """A new, empty directory for a variant serving ``target`` (unique per attempt)."""
        instance = self.directory / f"{variant_name(target)}-{uuid.uuid4().hex[:6]}"
        instance.mkdir(parents=True)
        return instance

    def on_disk(self) -> list[tuple[Path, dict[str, Any] | None]]:
        """Every variant directory, sorted, with its ``variant.json`` (None if it has none)."""
        if not self.directory.is_dir():
            return []
        paths = sorted(p for p in self.directory.iterdir() if p.is_dir())
        return [(path, read_json(path / VARIANT_INFO)) for path in paths]

    def start(
        self, target: VersionToServe, instance: Path, timeout: float, progress: Progress
    ) -> dict[str, Any]:
        """Start the serving app on the unpacked model; return its record once ``/ping`` is OK.

        Raises:
            RolloutFailed: (``start``) the process exits, refuses its model (the reason from
                ``/ping``) or does not answer within ``timeout`` seconds.
        """
        for _attempt in range(3):
            port = free_port()
            proc = self.processes.start(
                ["serve"],
                instance / VARIANT_LOG,
                instance,
                {
                    "MLOPS_MODEL_DIR": str(instance / MODEL_SUBDIR),
                    "MLOPS_MODEL_NAME": target.model,
                    "MLOPS_MODEL_VERSION": target.version,
                    "MLOPS_MODEL_CONTENTS_SHA256": target.contents_sha256,
                    "MLOPS_SERVING_HOST": "127.0.0.1",
                    "MLOPS_SERVING_PORT": str(port),
                    "MLOPS_SERVING_WORKERS": "1",
                    "MLOPS_VARIANT_NAME": instance.name,
                    # Its metrics' files live (and are deleted) with the variant's directory.
                    "PROMETHEUS_MULTIPROC_DIR": str(instance / METRICS_SUBDIR),
                },
            )
            record = {
                "name": instance.name,
                "model": target.model,
                "version": target.version,
                "family": target.family,
                "manifest_sha256": target.manifest_sha256,
                "contents_sha256": target.contents_sha256,
                "host": "127.0.0.1",
                "port": port,
                "weight": 1.0,
                "pid": proc.pid,
                "token": process_token(proc.pid),
                "dir": str(instance),
                "started_at": utc_now(),
            }
            # Written before waiting: a deploy killed now leaves a record cleanup can act on.
            (instance / VARIANT_INFO).write_text(json.dumps(record, indent=2) + "\n")
            try:
                self._await_ready(proc, record, timeout)
            except _PortTaken:
                self.processes.stop(proc.pid, record["token"])
                continue
            except BaseException:
                self.processes.stop(proc.pid, record["token"])
                raise
            progress(f"{instance.name} answers /ping on port {port} (pid {proc.pid})")
            return record
        raise RolloutFailed("start", "no free port could be bound after 3 attempts")

    def _await_ready(
        self, proc: subprocess.Popen[bytes], record: dict[str, Any], timeout: float
    ) -> None:
        log = Path(record["dir"]) / VARIANT_LOG
        url = f"http://127.0.0.1:{record['port']}/ping"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_tail(log)
                if _PORT_TAKEN in tail.lower():
                    raise _PortTaken(tail)
                raise RolloutFailed(
                    "start", f"the serving process exited ({proc.returncode}): {tail}"
                )
            response = http_get(url)
            if response is not None and _ready(response, proc.pid, record):
                return
            time.sleep(0.1)
        raise RolloutFailed(
            "start", f"no healthy /ping within {timeout:.0f}s; log: {log_tail(log, 5)}"
        )

    def healthy(self, record: dict[str, Any]) -> bool:
        """Whether the variant's process runs and its ``/ping`` reports its version."""
        if not is_alive(record.get("pid"), record.get("token")):
            return False
        response = http_get(f"http://127.0.0.1:{record['port']}/ping")
        if response is None or response.status_code != 200:
            return False
        return bool(response.json().get("version") == record.get("version"))

    def discard(self, record: dict[str, Any]) -> bool:
        """Stop the variant's process and delete its directory.

        Returns:
            True if its process was running and was stopped.
        """
        stopped = self.processes.stop(record.get("pid"), record.get("token"))
        self.remove_dir(record.get("dir"))
        return stopped

    def remove_dir(self, path: Any) -> None:
        """Delete a variant directory; a path that is not one (it comes from a file) is kept."""
        if not path:
            return
        target = Path(path).resolve()
        if target.parent == self.directory.resolve():
            shutil.rmtree(target, ignore_errors=True)


def _ready(response: httpx.Response, pid: int, record: dict[str, Any]) -> bool:
    """Whether a variant's ``/ping`` answer says it serves ``record``'s model.

    Raises:
        _PortTaken: another process answers on the port.
        RolloutFailed: (``start``) it serves another model or version, or refused its model.
    """
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        if body.get("status") == "failed":
            raise RolloutFailed("start", f"the serving app refused the model: {body.get('reason')}")
        return False
    if body.get("pid") not in (None, pid):
        raise _PortTaken(f"another process (pid {body.get('pid')}) answers")
    if (body.get("model"), body.get("version")) != (record["model"], record["version"]):
        raise RolloutFailed(
            "start",
            f"the variant reports {body.get('model')} {body.get('version')}, "
            f"expected {record['model']} {record['version']}",
        )
    return True
