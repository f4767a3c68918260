"""The local endpoint target: the serving app as processes on loopback, behind a router.

The embedded default (no cloud account): what SageMaker does with instances, this does with
processes on one machine, running the same serving app (:mod:`serving.app`)::

    client ──► router 127.0.0.1:8080 ──► variant process (serving app, model v3)  port A
               POST /endpoints/{model}/invocations       variant process (model v4)  port B

Everything lives under ``$MLOPS_HOME/endpoint/``::

    routes.json             model -> variants (name, version, port, weight, pid); the router
                            follows it (see serving.router), so switching is one atomic rename
    router.json, router.log the router's pid and log
    variants/{model}-{version}-{sha8}-{token}/
        model/              the verified, unpacked model.tar.gz (the variant's /opt/ml/model)
        variant.json        what runs there: pid, port, version, hashes
        serve.log           the variant's log
    locks/                  flock files: one deploy per model at a time, one routes writer

A deploy downloads the version from the store and checks every file against the manifest,
unpacks it, starts a variant process (which checks ``contents.json`` again before loading),
waits for its ``/ping``, switches the route, confirms the router serves the new variant, waits
until no request is in flight to the old one, then stops the old process and deletes its
directory. Any failure before the confirmation stops the new process, deletes its directory
and leaves the old route as it was; ``RolloutFailed`` says which step and why. Deploying the
version that already serves (same manifest, processes healthy) does nothing.

Processes start in their own session (``start_new_session``), so they outlive the command that
started them (``mlops retrain``) and a Ctrl-C there. The router starts with the first deploy;
``mlops endpoint stop`` (:meth:`LocalTarget.stop`) ends everything. A process is identified by
its pid and its start time (``/proc``), so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.endpoints import Resource, RolloutFailed, Serving, VersionToServe

if TYPE_CHECKING:
    import httpx

    from core.config import EndpointConfig, PlatformConfig
    from core.settings import Settings

Progress = Callable[[str], None]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENDPOINT_DIR = "endpoint"
ROUTES = "routes.json"
ROUTER_INFO = "router.json"
ROUTER_LOG = "router.log"
VARIANTS = "variants"
VARIANT_INFO = "variant.json"
VARIANT_LOG = "serve.log"
MODEL_SUBDIR = "model"

_SCRUBBED_ENV = re.compile(r"^(MLOPS_MODEL_|MLOPS_SERVING_|MLOPS_MAX_|SAGEMAKER_)")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PORT_TAKEN = "address already in use"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- processes ------------------------------------------------------------------------------


def process_token(pid: int) -> str | None:
    """An id of the process ``pid`` that survives nothing but the process: its start time.

    None when no such process runs (a zombie counts as gone). Without ``/proc`` (macOS) psutil
    answers when installed; otherwise any live pid matches.
    """
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            import psutil

            return str(psutil.Process(pid).create_time())
        except ImportError:
            try:
                os.kill(pid, 0)
            except OSError:
                return None
            return "unknown"
        except Exception:
            return None
    # The command name may hold spaces and parentheses: fields count from the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _reap(pid: int) -> None:
    # A child of this process that exited stays a zombie until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: Any, token: Any) -> bool:
    """Whether the process ``pid`` that had ``token`` (see :func:`process_token`) still runs."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    now = process_token(pid)
    return now is not None and (token in (None, "unknown") or now == token)


def terminate(pid: Any, token: Any, timeout: float) -> bool:
    """Stop a process started by this module (and its workers): SIGTERM, then SIGKILL.

    Returns:
        True if it was running and was stopped, False if it was gone already.
    """
    if not is_alive(pid, token):
        return False

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Started with start_new_session: the process leads its group, which holds
            # uvicorn's worker processes too.
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid, token):
            return True
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(pid, token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _PortTaken(Exception):
    """The variant could not bind its port (someone took it meanwhile): try another."""


# --- the target -----------------------------------------------------------------------------


class LocalTarget:
    """Serve model versions from local processes behind a router (see the module docstring).

    Args:
        home: ``MLOPS_HOME``; state goes to ``home/endpoint``.
        store_uri: the model store (a path or ``s3://``).
        host: the router's bind address.
        port: the router's port.
        kms_key_id: the store's KMS key (S3 only).
        aws_endpoint_url: S3 endpoint (moto server in tests).
        python: interpreter that runs the router and the variants.
        ping_timeout: longest wait for a new variant's ``/ping``; default each model's
            ``endpoint.timeout_seconds``.
        drain_seconds: longest wait for requests in flight to an old variant.
        stop_seconds: SIGTERM to SIGKILL.
        router_seconds: longest wait for the router to start.
    """

    kind = "local"

    def __init__(
        self,
        *,
        home: Path,
        store_uri: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        kms_key_id: str | None = None,
        aws_endpoint_url: str | None = None,
        python: str = sys.executable,
        ping_timeout: float | None = None,
        drain_seconds: float = 30.0,
        stop_seconds: float = 15.0,
        router_seconds: float = 30.0,
    ) -> None:
        self.root = Path(home).expanduser().resolve() / ENDPOINT_DIR
        self.store_uri = store_uri
        self.host = host
        self.port = port
        self.kms_key_id = kms_key_id
        self.aws_endpoint_url = aws_endpoint_url
        self.python = python
        self.ping_timeout = ping_timeout
        self.drain_seconds = drain_seconds
        self.stop_seconds = stop_seconds
        self.router_seconds = router_seconds
        self.last_timings: dict[str, float] = {}
        """Seconds each step of the last deploy took (``fetch``, ``start``, ``switch``...)."""
        # Popen objects of the processes started here: kept so they are waited for (no zombies).
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, platform: PlatformConfig | None = None, **options: Any
    ) -> LocalTarget:
        """The local endpoint of ``settings`` (``MLOPS_HOME``, store, router host and port).

        Args:
            settings: where state, store and router are.
            platform: unused (the local endpoint has no tags or prices); accepted so every
                target is built the same way.
            **options: passed to the constructor (``ping_timeout``, ``drain_seconds``...).
        """
        return cls(
            home=settings.home_dir,
            store_uri=settings.store,
            host=settings.endpoint_host,
            port=settings.endpoint_port,
            kms_key_id=settings.kms_key_id,
            aws_endpoint_url=settings.aws_endpoint_url,
            **options,
        )

    # --- paths and small helpers ----------------------------------------------------------------

    @property
    def routes_file(self) -> Path:
        """``routes.json``, which the router follows."""
        return self.root / ROUTES

    @property
    def variants_dir(self) -> Path:
        """Where variant directories live."""
        return self.root / VARIANTS

    @property
    def url(self) -> str:
        """Base URL of the router, as a client on this machine reaches it."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def address(self, model: str) -> str:
        """Where to POST requests for ``model``."""
        return f"{self.url}/endpoints/{model}/invocations"

    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return _flock(self.root / "locks" / f"{name}.lock")

    @staticmethod
    def _client(timeout: float) -> httpx.Client:
        import httpx

        # trust_env off: an HTTP proxy from the environment must not see loopback calls.
        return httpx.Client(timeout=timeout, trust_env=False)

    def _get(self, url: str, timeout: float = 2.0) -> httpx.Response | None:
        import httpx

        try:
            with self._client(timeout) as client:
                return client.get(url)
        except httpx.HTTPError:
            return None

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _SCRUBBED_ENV.match(k)}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{PROJECT_ROOT}{os.pathsep}{path}" if path else str(PROJECT_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("MPLBACKEND", "Agg")
        env.update(extra)
        return env

    def _spawn(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> Any:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [self.python, "-m", "serving", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                # Detached: the process outlives this command and ignores its Ctrl-C.
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        return proc

    def _stop(self, pid: Any, token: Any) -> bool:
        stopped = terminate(pid, token, self.stop_seconds)
        child = self._children.pop(pid, None) if isinstance(pid, int) else None
        if child is not None:
            with contextlib.suppress(Exception):
                child.wait(timeout=5)
        return stopped

    def _remove_dir(self, path: Any) -> None:
        if not path:
            return
        target = Path(path).resolve()
        # Only ever delete inside variants/: the path comes from a file on disk.
        if target.parent == self.variants_dir.resolve():
            shutil.rmtree(target, ignore_errors=True)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _state(self) -> dict[str, Any]:
        from serving.routes import read_state

        return read_state(self.routes_file)

    def _route(self, model: str) -> list[dict[str, Any]]:
        route = self._state()["models"].get(model)
        return list(route["variants"]) if route else []

    def _write_route(self, model: str, variants: list[dict[str, Any]] | None) -> int:
        """Set (or with None, drop) the model's route; return the new generation."""
        from serving.routes import write_state

        with self._lock("routes"):
            state = self._state()
            state["generation"] = int(state.get("generation", 0)) + 1
            if variants:
                state["models"][model] = {"variants": variants, "updated_at": _now()}
            else:
                state["models"].pop(model, None)
            write_state(self.routes_file, state)
            return int(state["generation"])

    # --- the router -----------------------------------------------------------------------------

    def _router_ping(self) -> dict[str, Any] | None:
        """The router's ``/ping``; ``{"foreign": ...}`` when something else answers."""
        response = self._get(f"{self.url}/ping", timeout=2.0)
        if response is None:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("router"):
            return {"foreign": f"HTTP {response.status_code} from a server that is no router"}
        if Path(str(body.get("state_file"))) != self.routes_file:
            return {"foreign": f"the local endpoint of {body.get('state_file')}"}
        return body

    def router_alive(self) -> bool:
        """Whether the router process recorded in ``router.json`` runs."""
        info = self._read_json(self.root / ROUTER_INFO) or {}
        return is_alive(info.get("pid"), info.get("token"))

    def ensure_router(self, progress: Progress) -> dict[str, Any]:
        """Start the router unless it runs and answers; return its ``/ping``.

        Raises:
            RolloutFailed: (``router``) the port is taken by something else, or the router
                does not start (its log says why).
        """
        from serving.routes import empty_state, write_state

        with self._lock("router"):
            ping = self._router_ping()
            if ping is not None and "foreign" not in ping:
                return ping
            if ping is not None:
                raise RolloutFailed(
                    "router",
                    f"{self.url} is in use by {ping['foreign']}; stop it or set "
                    "MLOPS_ENDPOINT_PORT to a free port",
                )
            info = self._read_json(self.root / ROUTER_INFO) or {}
            if is_alive(info.get("pid"), info.get("token")):
                progress(f"router pid {info['pid']} does not answer: restarting it")
                self._stop(info.get("pid"), info.get("token"))
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.routes_file.exists():
                write_state(self.routes_file, empty_state())
            log = self.root / ROUTER_LOG
            started = time.monotonic()
            proc = self._spawn(
                [
                    "router",
                    *("--host", self.host, "--port", str(self.port)),
                    *("--state-file", str(self.routes_file)),
                ],
                self._env({}),
                log,
                self.root,
            )
            info = {
                "pid": proc.pid,
                "token": process_token(proc.pid),
                "host": self.host,
                "port": self.port,
                "state_file": str(self.routes_file),
                "started_at": _now(),
                "log": str(log),
            }
            (self.root / ROUTER_INFO).write_text(json.dumps(info, indent=2) + "\n")
            while time.monotonic() - started < self.router_seconds:
                if proc.poll() is not None:
                    raise RolloutFailed(
                        "router", f"the router exited ({proc.returncode}): {_tail(log)}"
                    )
                ping = self._router_ping()
                if ping is not None and "foreign" not in ping:
                    progress(
                        f"router started on {self.url} (pid {proc.pid}, "
                        f"{time.monotonic() - started:.1f}s); log {log}"
                    )
                    return ping
                time.sleep(0.1)
            self._stop(proc.pid, info["token"])
            raise RolloutFailed(
                "router", f"the router did not answer within {self.router_seconds:.0f}s"
            )

    # --- variants -------------------------------------------------------------------------------

    @staticmethod
    def variant_name(target: VersionToServe) -> str:
        """``{model}-{version}-{manifest sha256[:8]}``: what a variant serves, by name."""
        return f"{target.model}-{target.version}-{target.manifest_sha256[:8]}"

    def _healthy(self, variant: dict[str, Any]) -> bool:
        if not is_alive(variant.get("pid"), variant.get("token")):
            return False
        response = self._get(f"http://127.0.0.1:{variant['port']}/ping", timeout=2.0)
        if response is None or response.status_code != 200:
            return False
        return bool(response.json().get("version") == variant.get("version"))

    def _already_serves(self, current: list[dict[str, Any]], target: VersionToServe) -> bool:
        if not current or not self.router_alive():
            return False
        if any(
            v.get("version") != target.version or v.get("manifest_sha256") != target.manifest_sha256
            for v in current
        ):
            return False
        ping = self._router_ping()
        if ping is None or "foreign" in ping:
            return False
        return all(self._healthy(v) for v in current)

    def _fetch(self, target: VersionToServe, instance: Path, progress: Progress) -> Path:
        """Download and verify the version into ``instance``; unpack its model; return it."""
        from adapters.layout import MODEL_TARBALL
        from adapters.package import extract_tarball
        from adapters.store import store_from_uri
        from adapters.versions import verify_version

        store = store_from_uri(
            self.store_uri, kms_key_id=self.kms_key_id, endpoint_url=self.aws_endpoint_url
        )
        download = instance / "download"
        verify_version(store, target.model, target.version, download)
        model_dir = extract_tarball(download / MODEL_TARBALL, instance / MODEL_SUBDIR)
        shutil.rmtree(download, ignore_errors=True)
        progress(f"{target.model} {target.version}: downloaded, verified and unpacked")
        return model_dir

    def _start_variant(
        self, target: VersionToServe, instance: Path, progress: Progress
    ) -> dict[str, Any]:
        """Start the serving app on the unpacked model; return its record once ``/ping`` is OK.

        Raises:
            RolloutFailed: (``start``) the process exits, refuses its model (the reason from
                ``/ping``) or does not answer in time.
        """
        timeout = (
            self.ping_timeout if self.ping_timeout is not None else target.endpoint.timeout_seconds
        )
        for _attempt in range(3):
            port = free_port()
            env = self._env(
                {
                    "MLOPS_MODEL_DIR": str(instance / MODEL_SUBDIR),
                    "MLOPS_MODEL_NAME": target.model,
                    "MLOPS_MODEL_VERSION": target.version,
                    "MLOPS_MODEL_CONTENTS_SHA256": target.contents_sha256,
                    "MLOPS_SERVING_HOST": "127.0.0.1",
                    "MLOPS_SERVING_PORT": str(port),
                    "MLOPS_SERVING_WORKERS": "1",
                }
            )
            proc = self._spawn(["serve"], env, instance / VARIANT_LOG, instance)
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
                "started_at": _now(),
            }
            # Written before waiting: a deploy killed now leaves a record cleanup can act on.
            (instance / VARIANT_INFO).write_text(json.dumps(record, indent=2) + "\n")
            try:
                self._await_ready(proc, record, timeout)
            except _PortTaken:
                self._stop(proc.pid, record["token"])
                continue
            except BaseException:
                self._stop(proc.pid, record["token"])
                raise
            progress(f"{instance.name} answers /ping on port {port} (pid {proc.pid})")
            return record
        raise RolloutFailed("start", "no free port could be bound after 3 attempts")

    def _await_ready(self, proc: Any, record: dict[str, Any], timeout: float) -> None:
        log = Path(record["dir"]) / VARIANT_LOG
        url = f"http://127.0.0.1:{record['port']}/ping"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(log)
                if _PORT_TAKEN in tail.lower():
                    raise _PortTaken(tail)
                raise RolloutFailed(
                    "start", f"the serving process exited ({proc.returncode}): {tail}"
                )
            response = self._get(url, timeout=2.0)
            if response is not None:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                if response.status_code == 200:
                    if body.get("pid") not in (None, proc.pid):
                        raise _PortTaken(f"another process (pid {body.get('pid')}) answers")
                    if (body.get("model"), body.get("version")) != (
                        record["model"],
                        record["version"],
                    ):
                        raise RolloutFailed(
                            "start",
                            f"the variant reports {body.get('model')} {body.get('version')}, "
                            f"expected {record['model']} {record['version']}",
                        )
                    return
                if body.get("status") == "failed":
                    raise RolloutFailed(
                        "start", f"the serving app refused the model: {body.get('reason')}"
                    )
            time.sleep(0.1)
        raise RolloutFailed(
            "start", f"no healthy /ping within {timeout:.0f}s; log: {_tail(log, 5)}"
        )

    def _confirm(self, model: str, generation: int, names: list[str]) -> float:
        """Wait until the router reports ``generation`` with ``names``; return the seconds."""
        start = time.monotonic()
        seen: Any = None
        while time.monotonic() - start < 10.0:
            response = self._get(f"{self.url}/endpoints/{model}", timeout=2.0)
            if response is not None and response.status_code == 200:
                seen = response.json()
                if (
                    seen.get("generation", 0) >= generation
                    and [v["name"] for v in seen.get("variants", [])] == names
                ):
                    return time.monotonic() - start
            time.sleep(0.01)
        raise RolloutFailed(
            "confirm", f"the router did not pick up routes generation {generation}: {seen}"
        )

    def _drain(self, model: str, names: set[str]) -> float:
        """Wait until the router has no request in flight to ``names``; return the seconds."""
        start = time.monotonic()
        while time.monotonic() - start < self.drain_seconds:
            response = self._get(f"{self.url}/endpoints/{model}", timeout=2.0)
            if response is None:  # no router: nothing can be in flight through it
                break
            inflight = response.json().get("inflight", {}) if response.status_code == 200 else {}
            if not names & set(inflight):
                break
            time.sleep(0.02)
        return time.monotonic() - start

    def _retire(self, model: str, old: list[dict[str, Any]], progress: Progress) -> float:
        """Drain, stop and delete the variants that no longer serve; return the drain time."""
        if not old:
            return 0.0
        drained = self._drain(model, {v["name"] for v in old})
        for variant in old:
            self._stop(variant.get("pid"), variant.get("token"))
            self._remove_dir(variant.get("dir"))
        progress(f"stopped {', '.join(v['name'] for v in old)} (drained in {drained:.2f}s)")
        return drained

    # --- the interface --------------------------------------------------------------------------

    def deploy(self, target: VersionToServe, progress: Progress) -> Serving:
        """Serve ``target`` on the model's route; see the module docstring for the steps.

        Raises:
            RolloutFailed: the route still serves what it served before, and the new process
                and its directory are gone.
        """
        started = time.monotonic()
        with self._lock(f"model-{target.model}"):
            current = self._route(target.model)
            if self._already_serves(current, target):
                progress(f"{target.model} already serves {target.version} on {self.url}")
                serving = self.describe(target.model)
                assert serving is not None
                return serving
            before = ", ".join(sorted({v["version"] for v in current})) or "nothing"
            self.ensure_router(progress)
            instance = self.variants_dir / f"{self.variant_name(target)}-{uuid.uuid4().hex[:6]}"
            instance.mkdir(parents=True)
            timings: dict[str, float] = {}
            record: dict[str, Any] | None = None
            switched = False
            step = "download"
            try:
                mark = time.monotonic()
                self._fetch(target, instance, progress)
                timings["fetch"] = time.monotonic() - mark
                step, mark = "start", time.monotonic()
                record = self._start_variant(target, instance, progress)
                timings["start"] = time.monotonic() - mark
                step, mark = "switch", time.monotonic()
                generation = self._write_route(target.model, [record])
                switched = True
                self._confirm(target.model, generation, [record["name"]])
                timings["switch"] = time.monotonic() - mark
            except BaseException as exc:
                if switched:
                    self._write_route(target.model, current or None)
                if record is not None:
                    self._stop(record["pid"], record["token"])
                shutil.rmtree(instance, ignore_errors=True)
                if isinstance(exc, RolloutFailed):
                    exc.reason += f"; {target.model} still serves {before}"
                    exc.args = (f"rollout failed at {exc.step}: {exc.reason}",)
                    raise
                if not isinstance(exc, Exception):
                    raise
                raise RolloutFailed(step, f"{exc}; {target.model} still serves {before}") from exc
            progress(
                f"{target.model}: route switched to {record['name']} "
                f"({timings['switch'] * 1000:.0f} ms to the router's confirmation)"
            )
            timings["drain"] = self._retire(target.model, current, progress)
            timings["total"] = time.monotonic() - started
            self.last_timings = timings
            progress(
                f"{target.model} serves {target.version} at {self.address(target.model)} "
                f"(deploy {timings['total']:.1f}s: fetch {timings['fetch']:.1f}s, "
                f"start {timings['start']:.1f}s, switch {timings['switch'] * 1000:.0f} ms, "
                f"drain {timings['drain']:.2f}s)"
            )
        serving = self.describe(target.model)
        if serving is None or serving.version != target.version:
            raise RolloutFailed(
                "verify", f"after the switch the endpoint reports {serving and serving.version}"
            )
        return serving

    def describe(self, model: str) -> Serving | None:
        """What the model's route serves; None when it has none. Starts nothing.

        ``status`` is ``running`` when the router and every variant run, ``degraded`` when
        some variant does not, ``down`` when nothing can answer (``version`` is then None).
        """
        current = self._route(model)
        if not current:
            return None
        router = self.router_alive()
        variants: dict[str, dict[str, Any]] = {}
        live = []
        for v in current:
            alive = is_alive(v.get("pid"), v.get("token"))
            if alive:
                live.append(v)
            variants[v["name"]] = {
                "version": v.get("version"),
                "weight": v.get("weight"),
                "port": v.get("port"),
                "pid": v.get("pid"),
                "alive": alive,
                "dir": v.get("dir"),
                "started_at": v.get("started_at"),
            }
        if router and len(live) == len(current):
            status = "running"
        elif router and live:
            status = "degraded"
        else:
            status = "down"
        top = max(live, key=lambda v: float(v.get("weight", 0))) if router and live else None
        return Serving(
            model=model,
            endpoint_name=model,
            status=status,
            version=top.get("version") if top else None,
            address=self.address(model),
            config_name=",".join(v["name"] for v in current),
            variants=variants,
        )

    def invoke(self, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """POST ``{"instances": records}`` through the router; return the parsed answer.

        Raises:
            RolloutFailed: (``smoke-test``) unreachable, a non-2xx answer, or not a JSON object.
        """
        import httpx

        try:
            with self._client(70.0) as client:
                response = client.post(self.address(model), json={"instances": records})
        except httpx.HTTPError as exc:
            raise RolloutFailed("smoke-test", f"cannot reach {self.address(model)}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise RolloutFailed(
                "smoke-test", f"{model} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            answer = response.json()
        except ValueError as exc:
            raise RolloutFailed(
                "smoke-test", f"{model} answered a body that is not JSON: {response.text[:200]!r}"
            ) from exc
        if not isinstance(answer, dict):
            raise RolloutFailed("smoke-test", f"{model} answered {type(answer).__name__}")
        return answer

    def resources(self) -> list[Resource]:
        """Each model's route (``endpoint``) and each variant directory (``model``).

        A variant directory is in use when a route names it; any other (left by a deploy that
        was killed, say) is deletable, with its process if one still runs.
        """
        state = self._state()
        in_use = {v["name"] for route in state["models"].values() for v in route["variants"]}
        found: list[Resource] = []
        for model in sorted(state["models"]):
            serving = self.describe(model)
            if serving is None:
                continue
            found.append(
                Resource(
                    "endpoint",
                    model,
                    model,
                    serving.version,
                    True,
                    {
                        "status": serving.status,
                        "address": serving.address,
                        "variants": sorted(serving.variants),
                        "monthly_cost_usd": 0.0,
                        "idle_days": None,
                    },
                )
            )
        if self.variants_dir.is_dir():
            for path in sorted(p for p in self.variants_dir.iterdir() if p.is_dir()):
                info = self._read_json(path / VARIANT_INFO) or {}
                model = str(info.get("model") or path.name.rsplit("-", 3)[0])
                found.append(
                    Resource(
                        "model",
                        path.name,
                        model,
                        info.get("version"),
                        path.name in in_use,
                        {
                            "dir": str(path),
                            "pid": info.get("pid"),
                            "port": info.get("port"),
                            "running": is_alive(info.get("pid"), info.get("token")),
                        },
                    )
                )
        return found

    def delete(self, resource: Resource) -> None:
        """Delete a route (``endpoint``) or an unused variant directory (``model``).

        Raises:
            ValueError: the variant is in use by a route (checked now), or an unknown kind.
        """
        if resource.kind == "endpoint":
            self.remove(resource.model)
            return
        if resource.kind != "model" or not _NAME.match(resource.name):
            raise ValueError(f"cannot delete {resource.kind} {resource.name!r}")
        # The model's lock first, as deploy takes it: a variant being started (no route yet,
        # maybe no variant.json yet) is never taken for an unused one.
        with self._lock(f"model-{resource.model}"), self._lock("routes"):
            state = self._state()
            names = {v["name"] for r in state["models"].values() for v in r["variants"]}
            if resource.name in names:
                raise ValueError(f"variant {resource.name} is in use by a route")
            path = self.variants_dir / resource.name
            info = self._read_json(path / VARIANT_INFO) or {}
            self._stop(info.get("pid"), info.get("token"))
            self._remove_dir(path)

    def remove(self, model: str, progress: Progress | None = None) -> None:
        """Drop the model's route and stop its variants (a rollout whose endpoint was new)."""
        say = progress or (lambda _message: None)
        with self._lock(f"model-{model}"):
            current = self._route(model)
            if not current:
                return
            self._write_route(model, None)
            self._retire(model, current, say)

    def monthly_cost(self, endpoint: EndpointConfig, platform: PlatformConfig) -> float | None:
        """Local processes cost nothing to rent."""
        return 0.0

    def overview(self) -> dict[str, Any]:
        """Router, routes and stray variant directories, for ``mlops endpoint status``."""
        info = self._read_json(self.root / ROUTER_INFO) or {}
        try:
            state = self._state()
            error = None
        except ValueError as exc:
            state, error = {"models": {}, "generation": None}, f"{self.routes_file}: {exc}"
        models = {}
        for model in sorted(state["models"]):
            serving = self.describe(model)
            if serving is not None:
                models[model] = {
                    "status": serving.status,
                    "version": serving.version,
                    "address": serving.address,
                    "variants": serving.variants,
                }
        stray = [r.name for r in self.resources() if r.kind == "model" and not r.in_use]
        return {
            "url": self.url,
            "state_dir": str(self.root),
            "router": {
                "running": self.router_alive(),
                "pid": info.get("pid"),
                "started_at": info.get("started_at"),
                "log": str(self.root / ROUTER_LOG),
            },
            "generation": state.get("generation"),
            "models": models,
            "stray_variants": stray,
            "error": error,
        }

    def stop(self, progress: Progress | None = None) -> list[str]:
        """Stop the router and every variant; delete the routes and variant directories.

        Returns:
            What was stopped, one line each.
        """
        say = progress or (lambda _message: None)
        stopped: list[str] = []
        with self._lock("routes"):
            try:
                state = self._state()
            except ValueError:
                state = {"models": {}}
            records = [v for r in state["models"].values() for v in r["variants"]]
            if self.variants_dir.is_dir():
                for path in sorted(p for p in self.variants_dir.iterdir() if p.is_dir()):
                    info = self._read_json(path / VARIANT_INFO)
                    if info and info.get("name") not in {r["name"] for r in records}:
                        records.append(info)
            for record in records:
                if self._stop(record.get("pid"), record.get("token")):
                    stopped.append(f"variant {record.get('name')} (pid {record.get('pid')})")
                self._remove_dir(record.get("dir"))
            if self.variants_dir.is_dir():
                for path in self.variants_dir.iterdir():
                    self._remove_dir(path)
            self.routes_file.unlink(missing_ok=True)
        with self._lock("router"):
            info = self._read_json(self.root / ROUTER_INFO) or {}
            if self._stop(info.get("pid"), info.get("token")):
                stopped.append(f"router on {self.url} (pid {info.get('pid')})")
            (self.root / ROUTER_INFO).unlink(missing_ok=True)
        for line in stopped:
            say(f"stopped {line}")
        return stopped
