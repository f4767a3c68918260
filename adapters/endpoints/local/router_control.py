"""The local endpoint's router and the route table it follows.

``routes.json`` (layout in :mod:`serving.routes`) maps each model to its variants; every write
bumps its ``generation``, and the router (:mod:`serving.router`) reloads the file and reports
the generation it serves, so a switch is one atomic rename that this side can confirm. The
router process starts with the first deploy and is found again through ``router.json`` (pid,
token, address). Flock files under ``locks/`` serialise what two commands could race on.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.endpoints.local.processes import (
    ServingProcesses,
    file_lock,
    http_get,
    is_alive,
    log_tail,
    process_token,
    read_json,
    utc_now,
)
from core.endpoint import Progress, RolloutFailed

if TYPE_CHECKING:
    import subprocess

ROUTES = "routes.json"
ROUTER_INFO = "router.json"
ROUTER_LOG = "router.log"
ROUTE_EXTRAS = ("experiment", "shadow", "capture")
"""The keys of a route besides its variants (:mod:`serving.experiment_routing`)."""


def extras(route: dict[str, Any] | None) -> dict[str, Any]:
    """A route's experiment, shadow and capture, each None when absent (to restore it whole)."""
    return {k: (route or {}).get(k) for k in ROUTE_EXTRAS}


def routed(route: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every variant record a route names: its production variants, then its shadow."""
    if not route:
        return []
    return [*route.get("variants", []), *([route["shadow"]] if route.get("shadow") else [])]


class RouterControl:
    """The route table and the router process of one local endpoint.

    Args:
        root: the endpoint's state directory (``$MLOPS_HOME/endpoint``).
        host: the router's bind address.
        port: the router's port.
        processes: starts and stops the router process.
        start_seconds: longest wait for the router to start.
        env: variables for the router process beyond the serving allowlist (the AWS settings
            its capture needs when the store is on S3).
    """

    def __init__(
        self,
        root: Path,
        host: str,
        port: int,
        processes: ServingProcesses,
        start_seconds: float,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.env = dict(env or {})
        self.host = host
        self.port = port
        self.processes = processes
        self.start_seconds = start_seconds

    @property
    def routes_file(self) -> Path:
        """``routes.json``, which the router follows."""
        return self.root / ROUTES

    @property
    def info_file(self) -> Path:
        """``router.json``: the router's pid, token, address and log."""
        return self.root / ROUTER_INFO

    @property
    def log_file(self) -> Path:
        """The router's log."""
        return self.root / ROUTER_LOG

    @property
    def url(self) -> str:
        """Base URL of the router, as a client on this machine reaches it."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The flock ``locks/{name}.lock``, held across processes.

        ``routes``: one writer of ``routes.json``; ``router``: one starter or stopper of the
        router; ``model-{model}``: one deploy (or delete) per model at a time.
        """
        return file_lock(self.root / "locks" / f"{name}.lock")

    # --- the route table ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The whole route table.

        Raises:
            ValueError: ``routes.json`` is not a route table.
        """
        from serving.routes import read_state

        return read_state(self.routes_file)

    def variants(self, model: str) -> list[dict[str, Any]]:
        """The production variant records on the model's route; empty when it has none."""
        route = self.state()["models"].get(model)
        return list(route["variants"]) if route else []

    def route(self, model: str) -> dict[str, Any] | None:
        """The model's whole route: variants, and ``experiment``, ``shadow``, ``capture``."""
        route = self.state()["models"].get(model)
        return dict(route) if route else None

    def write(
        self,
        model: str,
        variants: list[dict[str, Any]] | None,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Set (or with None, drop) the model's route; return the new generation.

        Args:
            model: the model.
            variants: its production variants; None or empty drops the route.
            extra: ``experiment``, ``shadow`` or ``capture`` to set (None as a value removes
                the key). Without it, a new route keeps the old route's ``capture`` (capture
                stays as it is across deploys) and drops any experiment and shadow.
        """
        from serving.routes import write_state

        with self.lock("routes"):
            state = self.state()
            state["generation"] = int(state.get("generation", 0)) + 1
            if variants:
                old = state["models"].get(model) or {}
                route: dict[str, Any] = {"variants": variants, "updated_at": utc_now()}
                if "capture" in old:
                    route["capture"] = old["capture"]
                route.update(extra or {})
                state["models"][model] = {k: v for k, v in route.items() if v is not None}
            else:
                state["models"].pop(model, None)
            write_state(self.routes_file, state)
            return int(state["generation"])

    def confirm(self, model: str, generation: int, names: list[str]) -> float:
        """Wait until the router reports ``generation`` with ``names``; return the seconds.

        Raises:
            RolloutFailed: (``confirm``) the router did not within 10 seconds.
        """
        start = time.monotonic()
        seen: Any = None
        while time.monotonic() - start < 10.0:
            response = http_get(f"{self.url}/endpoints/{model}")
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

    def drain(self, model: str, names: set[str], seconds: float) -> float:
        """Wait up to ``seconds`` until no request to ``names`` is in flight; return the wait."""
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            response = http_get(f"{self.url}/endpoints/{model}")
            if response is None:  # no router: nothing can be in flight through it
                break
            inflight = response.json().get("inflight", {}) if response.status_code == 200 else {}
            if not names & set(inflight):
                break
            time.sleep(0.02)
        return time.monotonic() - start

    # --- the router process ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``router.json`` records (empty when there is none)."""
        return read_json(self.info_file) or {}

    def alive(self) -> bool:
        """Whether the router process recorded in ``router.json`` runs."""
        info = self.info()
        return is_alive(info.get("pid"), info.get("token"))

    def ping(self) -> dict[str, Any] | None:
        """The router's ``/ping``; ``{"foreign": ...}`` when something else answers."""
        response = http_get(f"{self.url}/ping")
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

    def ensure(self, progress: Progress) -> dict[str, Any]:
        """Start the router unless it runs and answers; return its ``/ping``.

        Raises:
            RolloutFailed: (``router``) the port is taken by something else, or the router
                does not start (its log says why).
        """
        with self.lock("router"):
            ping = self.ping()
            if ping is not None and "foreign" not in ping:
                return ping
            if ping is not None:
                raise RolloutFailed(
                    "router",
                    f"{self.url} is in use by {ping['foreign']}; stop it or set "
                    "MLOPS_ENDPOINT_PORT to a free port",
                )
            info = self.info()
            if is_alive(info.get("pid"), info.get("token")):
                progress(f"router pid {info['pid']} does not answer: restarting it")
                self.processes.stop(info.get("pid"), info.get("token"))
            return self._start(progress)

    def _start(self, progress: Progress) -> dict[str, Any]:
        """Start the router process (the ``router`` lock held); wait for its ``/ping``."""
        from serving.routes import empty_state, write_state

        self.root.mkdir(parents=True, exist_ok=True)
        if not self.routes_file.exists():
            write_state(self.routes_file, empty_state())
        started = time.monotonic()
        proc = self.processes.start(
            [
                "router",
                *("--host", self.host, "--port", str(self.port)),
                *("--state-file", str(self.routes_file)),
            ],
            self.log_file,
            self.root,
            self.env,
        )
        token = process_token(proc.pid)
        info = {
            "pid": proc.pid,
            "token": token,
            "host": self.host,
            "port": self.port,
            "state_file": str(self.routes_file),
            "started_at": utc_now(),
            "log": str(self.log_file),
        }
        self.info_file.write_text(json.dumps(info, indent=2) + "\n")
        ping = self._await_ping(proc)
        if ping is None:
            self.processes.stop(proc.pid, token)
            raise RolloutFailed(
                "router", f"the router did not answer within {self.start_seconds:.0f}s"
            )
        progress(
            f"router started on {self.url} (pid {proc.pid}, "
            f"{time.monotonic() - started:.1f}s); log {self.log_file}"
        )
        return ping

    def _await_ping(self, proc: subprocess.Popen[bytes]) -> dict[str, Any] | None:
        """The new router's ``/ping`` once it answers; None when it does not in time.

        Raises:
            RolloutFailed: (``router``) the process exited.
        """
        started = time.monotonic()
        while time.monotonic() - started < self.start_seconds:
            if proc.poll() is not None:
                raise RolloutFailed(
                    "router", f"the router exited ({proc.returncode}): {log_tail(self.log_file)}"
                )
            ping = self.ping()
            if ping is not None and "foreign" not in ping:
                return ping
            time.sleep(0.1)
        return None

    def stop(self) -> int | None:
        """Stop the router process and forget it.

        Returns:
            The pid stopped; None when no router ran.
        """
        with self.lock("router"):
            info = self.info()
            stopped = self.processes.stop(info.get("pid"), info.get("token"))
            self.info_file.unlink(missing_ok=True)
        return info.get("pid") if stopped else None
