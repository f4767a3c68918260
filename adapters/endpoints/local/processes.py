"""Processes of the local endpoint: start, recognise and stop them; ports, locks, logs, pings.

The router and every variant are ``python -m serving ...`` processes started here, detached
(``start_new_session``), so they outlive the command that started them (``mlops retrain``) and
a Ctrl-C there. Later commands find them again through the pid and *token* recorded on disk:
the token is when the process started, so a pid the system recycled for another process is never
taken for ours, or signalled. On Linux it is the start in clock ticks since boot (``/proc``),
which no wall-clock step moves; elsewhere psutil's create time (boot time plus those ticks),
matched within a tolerance because the boot time moves when the wall clock is stepped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    import httpx

# A serving process gets an allowlisted environment: what Python, the locale and the numeric
# libraries need, and nothing else. The command that starts it holds database passwords, AWS
# keys and webhook URLs; a process that answers HTTP requests needs none of them. What
# configures it (its model, bind address, limits) is passed explicitly for each process.
_ALLOWED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "VIRTUAL_ENV",
        "SYSTEMROOT",
        "MPLBACKEND",
        "MPLCONFIGDIR",
        "COVERAGE_PROCESS_START",
        "COVERAGE_RCFILE",
    }
)
_ALLOWED_ENV_PREFIX = re.compile(r"^(LC_|OMP_|MKL_|OPENBLAS_|NUMEXPR_)")
# The one exception is the router on an S3 store: it writes the experiment capture there
# itself, so it gets what boto3's default credential chain reads (keys, profile files, the
# container and web-identity providers) and the pipeline's endpoint, profile and region.
_AWS_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CA_BUNDLE",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_STS_REGIONAL_ENDPOINTS",
    }
)
# psutil's create time is the boot time plus the start in ticks since boot, and the boot time
# moves when the wall clock is stepped (a fresh VM syncing its clock steps it by seconds: a
# CI run once saw every live variant reported dead). Tokens in that form, written where /proc
# is missing or by earlier versions, are matched within this window. A recycled pid starting
# this close to the original would need the pid space to wrap within the window.
_SAME_START_SECONDS = 2.0


# --- recognising a process ------------------------------------------------------------------


def process_token(pid: int) -> str | None:
    """An id of the process ``pid`` that survives nothing but the process: its start.

    Returns:
        The start in clock ticks since boot where ``/proc`` exists (digits), else psutil's
        create time; None when no such process runs (a zombie counts as gone).
    """
    proc = _running(pid)
    if proc is None:
        return None
    ticks = _start_ticks(pid)
    return str(ticks) if ticks is not None else str(proc.create_time())


def is_alive(pid: Any, token: Any) -> bool:
    """Whether the process ``pid`` that had ``token`` (see :func:`process_token`) still runs.

    ``pid`` and ``token`` come from files on disk, so anything is accepted: a pid that is not a
    positive int is never alive. A token of None matches any live process with that pid; a
    token the process does not match (a recycled pid) or cannot be read means not alive.
    """
    return _running(pid, token) is not None


def _running(pid: Any, token: Any = None) -> psutil.Process | None:
    """The live, non-zombie process ``pid`` started at ``token``; None otherwise."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if token is not None and not _same_start(proc, token):
            return None
    except psutil.Error:
        return None
    return proc


def _same_start(proc: psutil.Process, token: Any) -> bool:
    if isinstance(token, str) and token.isdigit():
        ticks = _start_ticks(proc.pid)
        if ticks is not None:  # both in ticks since boot: exact, whatever the wall clock did
            return ticks == int(token)
    recorded = _token_seconds(token)
    return recorded is not None and abs(proc.create_time() - recorded) < _SAME_START_SECONDS


def _start_ticks(pid: int) -> int | None:
    """``/proc/PID/stat``'s starttime (clock ticks since boot); None without ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        return int(stat[stat.rfind(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _token_seconds(token: Any) -> float | None:
    """The create time (seconds since the epoch) a token records; None when unreadable."""
    if not isinstance(token, str):
        return None
    try:
        if token.isdigit():
            # Ticks since boot read where /proc is gone (never in practice): via the boot time.
            return float(psutil.boot_time()) + int(token) / os.sysconf("SC_CLK_TCK")
        return float(token)
    except (ValueError, OSError):
        return None


# --- stopping a process ---------------------------------------------------------------------


def terminate(pid: Any, token: Any, timeout: float) -> bool:
    """Stop a process started by this module (and its workers): SIGTERM, then SIGKILL.

    Args:
        pid: the recorded pid.
        token: the recorded token; a process that does not match it is left alone.
        timeout: seconds from SIGTERM to SIGKILL.

    Returns:
        True if it was running and was stopped, False if it was gone already.
    """
    proc = _running(pid, token)
    if proc is None:
        return False
    _signal(proc, signal.SIGTERM)
    if not _wait_gone(proc, timeout):
        _signal(proc, signal.SIGKILL)
        _wait_gone(proc, 5.0)
    return True


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        # Started with start_new_session, the process leads its group, which holds uvicorn's
        # worker processes too. is_running() first: the pid must still be this process.
        if proc.is_running() and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to end; True once it has."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psutil.TimeoutExpired):
            proc.wait(timeout=0.05)  # also reaps it when it is a child of this process
            return True
        if _gone(proc):
            return True
        if time.monotonic() >= deadline:
            return False


def _gone(proc: psutil.Process) -> bool:
    # Not our child: psutil waits for the pid to vanish, but an exited process stays a zombie
    # until its own parent reaps it. Exited is gone.
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


# --- starting a process ---------------------------------------------------------------------


class ServingProcesses:
    """Starts ``python -m serving ...`` processes, detached, and stops them.

    Args:
        python: the interpreter that runs them.
        stop_seconds: SIGTERM to SIGKILL.
    """

    def __init__(self, python: str, stop_seconds: float) -> None:
        self.python = python
        self.stop_seconds = stop_seconds
        # Popen objects of the processes started here: kept so they are waited for (no zombies).
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self, args: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m serving *args`` in ``cwd``, its output appended to ``log``.

        Args:
            args: the ``serving`` command and its options (``serve``, ``router --port ...``).
            log: the process's log file (stdout and stderr).
            cwd: its working directory.
            env: variables for this process (its ``MLOPS_MODEL_*``, ``MLOPS_SERVING_*``...), on
                top of an allowlist of this one's environment (``PATH``, locale, ``TMPDIR``...):
                no secret of the caller reaches a serving process.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [self.python, "-m", "serving", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_serving_env(env or {}),
                cwd=cwd,
                # Detached: the process outlives this command and ignores its Ctrl-C.
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        return proc

    def stop(self, pid: Any, token: Any) -> bool:
        """Stop the process ``pid`` started at ``token`` (see :func:`terminate`).

        Returns:
            True if it was running and was stopped, False if it was gone already.
        """
        stopped = terminate(pid, token, self.stop_seconds)
        child = self._children.pop(pid, None) if isinstance(pid, int) else None
        if child is not None:
            with contextlib.suppress(Exception):
                child.wait(timeout=5)
        return stopped


def aws_env(*, endpoint_url: str | None, profile: str | None, region: str | None) -> dict[str, str]:
    """This process's AWS credential settings, for the one child that writes to S3.

    Only the local router gets them, and only when the store is on S3 (its capture writes
    there). Keys in the environment are passed as they are: a long-running router should get
    refreshing credentials (a profile, an instance or container role), not a session token
    that expires under it.

    Args:
        endpoint_url: the pipeline's AWS endpoint (moto server in tests), if any.
        profile: the pipeline's AWS profile, if any.
        region: the pipeline's region.
    """
    env = {k: v for k, v in os.environ.items() if k in _AWS_ENV}
    for name, value in (
        ("AWS_ENDPOINT_URL", endpoint_url),
        ("AWS_PROFILE", profile),
        ("AWS_DEFAULT_REGION", region),
    ):
        if value:
            env[name] = value
    return env


FEEDBACK_TOKEN_ENV = "MLOPS_ROUTER_FEEDBACK_TOKEN"
"""The bearer token of the router's ``POST /feedback/{model}`` (:mod:`serving.feedback`)."""


def feedback_env(store_uri: str, kms_key_id: str | None) -> dict[str, str]:
    """The router's feedback settings: where outcomes go, and the token, if this process has it.

    The token is a secret of the deploying process's environment (or of whatever fills it
    there: a Prefect Secret block in a flow-runner's job variables); it is passed to the
    router only, never written to a file the endpoint keeps. Without it feedback is off.
    """
    env = {"MLOPS_ROUTER_FEEDBACK_STORE_URI": store_uri}
    if kms_key_id:
        env["MLOPS_ROUTER_FEEDBACK_KMS_KEY_ID"] = kms_key_id
    token = os.environ.get(FEEDBACK_TOKEN_ENV)
    if token:
        env[FEEDBACK_TOKEN_ENV] = token
    return env


def _serving_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ALLOWED_ENV or _ALLOWED_ENV_PREFIX.match(k)}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{PROJECT_ROOT}{os.pathsep}{path}" if path else str(PROJECT_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra)
    return env


# --- ports, files and pings -----------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 12) -> str:
    """The last non-empty ``lines`` of a log, joined with `` | ``; ``(no log)`` if unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def utc_now() -> str:
    """The current UTC time for ``started_at`` fields: ISO 8601, milliseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (``router.json``, ``variant.json``); None if absent or bad."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def http_client(timeout: float) -> httpx.Client:
    """An HTTP client for loopback calls to the router and the variants."""
    import httpx

    # trust_env off: an HTTP proxy from the environment must not see loopback calls.
    return httpx.Client(timeout=timeout, trust_env=False)


def http_get(url: str, timeout: float = 2.0) -> httpx.Response | None:
    """GET ``url``; None when nothing answers (refused, timed out, cut off)."""
    import httpx

    try:
        with http_client(timeout) as client:
            return client.get(url)
    except httpx.HTTPError:
        return None
