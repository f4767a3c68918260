"""The embedded Prefect API, started before a command imports its flows.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server on a flow's first client
call (``prefect.server.api.server.SubprocessASGIServer``). By then the command has imported the
flows (about 5 s here), and to launch the server the client imports Prefect's server package
too; the server process then imports that package again (about 9 s) and starts. Each waits for
the other. A command here launches the same server command first, imports its flows while the
server starts, and waits only for what is left: a flow run with nothing to do took 16.6 s this
way against 22.7 s (BENCHMARKS.md). Prefect's class cannot be used for this, as importing it is the
cost being hidden; what is kept from it is the command, its environment and its health check.

One server serves every flow a process runs, and stops when the process exits, like Prefect's:
at a normal exit, an exception or Ctrl-C (``atexit``), and at SIGTERM or SIGHUP (a handler,
:func:`_stop_then_die`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

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
        with _launching():
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
            _LAUNCHED.add(self)
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
_LAUNCHED: weakref.WeakSet[EmbeddedAPI] = weakref.WeakSet()
"""Every server this process launched and still holds; the signal handler stops them."""
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_launch_depth = 0
_deferred: list[int] = []


def _stop_then_die(signum: int, frame: FrameType | None) -> None:
    """Stop the servers this process launched, then die of ``signum`` as without this handler.

    Python's default for SIGTERM and SIGHUP ends the process without running ``atexit``, so a
    command stopped by ``kill``, a service manager or a closed terminal left its server running
    (issue 21). Of the two existing ways to tie a child to its parent, this is the one taken:
    a handler that runs the cleanup of a normal exit (:meth:`EmbeddedAPI.stop`) and then
    restores the default and re-sends the signal, so the command ends exactly as before (killed
    by the signal, nothing else run), on every POSIX system. ``prctl(PR_SET_PDEATHSIG)`` was
    not: it would also cover a SIGKILL of the command, which no handler can, but it is Linux
    only (this would still be needed elsewhere), it fires when the *thread* that forked the
    child ends rather than the process, and setting it in the child needs ``preexec_fn``
    (unsafe in a process with threads) or a wrapper around uvicorn's command.
    A Prefect flow running in the main thread swaps in its own SIGTERM handler, marks the run
    crashed on the still-running server, then re-sends the signal to this one.
    """
    if _launch_depth:  # inside Popen: the server is not known yet; act once it is
        _deferred.append(signum)
        return
    for api in list(_LAUNCHED):
        api.stop()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextmanager
def _launching() -> Iterator[None]:
    """Hold a stop signal that arrives while a server is launched until it is registered."""
    global _launch_depth
    _launch_depth += 1
    try:
        yield
    finally:
        _launch_depth -= 1
        if not _launch_depth and _deferred:
            _stop_then_die(_deferred.pop(), None)


def _stop_on_signals() -> None:
    """Install :func:`_stop_then_die` for SIGTERM and SIGHUP where they have their default.

    Only the main thread may set handlers; a handler someone else installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _stop_then_die)


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
    _stop_on_signals()  # before the launch, so that no signal falls between the two
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
