"""The embedded Prefect API, started before a command imports its flows.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server on a flow's first client
call (``prefect.server.api.server.SubprocessASGIServer``). By then the command has imported the
flows (about 5 s here), and to launch the server the client imports Prefect's server package
too; the server process then imports that package again (about 9 s) and starts. Each waits for
the other. A command here launches the same server command first, imports its flows while the
server starts, and waits only for what is left: a flow run with nothing to do took 16.6 s this
way against 22.7 s (BENCHMARKS.md). Prefect's class cannot be used for this, as importing it is the
cost being hidden; what is kept from it is the command, its environment and its health check.

One server serves every flow a process runs, and stops when the process exits, like Prefect's.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# What Prefect's SubprocessASGIServer sets for its server process (prefect 3.8).
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}


class PrefectAPIError(RuntimeError):
    """The embedded Prefect API did not start."""


class EmbeddedAPI:
    """One temporary Prefect API server process on a free loopback port."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("prefect")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise PrefectAPIError("prefect is not installed")
        app_dir = Path(next(iter(spec.submodule_search_locations))).parent
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn",
                "--app-dir", str(app_dir),
                "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on",
            ],
            env={**env, **SERVER_ENV},
        )  # fmt: skip
        self._ready = False

    def wait(self, timeout: float | None = None) -> None:
        """Return once the server answers ``/health``.

        Raises:
            PrefectAPIError: the server exited, or did not answer within ``timeout`` seconds
                (by default Prefect's ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``,
                from wherever Prefect reads it, as its own launcher does).
        """
        if self._ready:
            return
        if timeout is None:
            from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

            timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise PrefectAPIError(
                    f"the embedded Prefect API exited with code {code} before it answered "
                    "(its error is printed above)"
                )
            try:
                with opener.open(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        self._ready = True
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PrefectAPIError(
                    f"the embedded Prefect API did not answer within {timeout:.0f} s; raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a server "
                    "(`make server`) and set PREFECT_API_URL"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_API: EmbeddedAPI | None = None
_DECLINED = False


def start() -> EmbeddedAPI | None:
    """Start this process's embedded API now, without waiting; ``None`` under a real server.

    Call it before importing flows, so the server starts while they import. Idempotent: one
    server per process, stopped when the process exits. The server is launched first; then
    Prefect's settings are read (the environment, a profile, ``prefect.toml``): when they name
    a server, it is stopped and that server is used, as in Prefect. Otherwise its URL becomes
    ``PREFECT_API_URL`` for the whole process, its threads (a process pool's event forwarder
    runs in one) and the processes a task runner starts.
    """
    global _API, _DECLINED
    if _DECLINED:
        return None
    if _API is not None:
        return _API  # its wait() says so if it has exited
    if os.environ.get("PREFECT_API_URL"):
        return None
    api = EmbeddedAPI()
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        api.stop()
        _DECLINED = True  # this process uses that server from now on
        return None
    os.environ["PREFECT_API_URL"] = api.url
    refresh_global_settings_context()
    _API = api
    atexit.register(api.stop)
    return api
