"""How the local endpoint recognises and stops its processes (pid plus create-time token).

The router and the variants outlive the command that started them; a later command finds them
by the pid and token written to disk. By then the pid may belong to another process (pids are
recycled), and signalling that one would kill a stranger. These tests use real child processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from adapters.endpoints.local.processes import is_alive, process_token, terminate

SLEEPER = "import time; time.sleep(60)"

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``python -c CODE`` children the way the endpoint does (own session); kill leftovers."""
    started: list[subprocess.Popen[bytes]] = []

    def start(code: str = SLEEPER) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_live_child_with_its_token_is_alive(spawn: Spawn) -> None:
    proc = spawn()
    token = process_token(proc.pid)

    assert token is not None
    if Path("/proc/self/stat").exists():  # ticks since boot, which no clock step moves
        assert token == _ticks(proc.pid)
    else:
        assert token == str(psutil.Process(proc.pid).create_time())
    assert is_alive(proc.pid, token)
    # No token (an old record, a test's orphan check): any live process with that pid counts.
    assert is_alive(proc.pid, None)


def test_a_recycled_pid_is_not_taken_for_the_recorded_process() -> None:
    # This test's own process stands in for a stranger that got a recorded pid again: it runs,
    # but started long after the token on record says "our" process started.
    me = psutil.Process(os.getpid())
    recorded = str(me.create_time() - 3600)

    assert not is_alive(os.getpid(), recorded)
    # A token that cannot be read proves nothing either (the old reader matched any live pid).
    assert not is_alive(os.getpid(), "unknown")


def test_a_pid_that_is_gone_or_not_a_pid_is_not_alive(spawn: Spawn) -> None:
    proc = spawn("pass")
    token = process_token(proc.pid)
    proc.wait()

    assert process_token(proc.pid) is None
    assert not is_alive(proc.pid, token)
    for pid in (None, "123", 0, -1, True, 1.5):
        assert not is_alive(pid, None), pid


def test_an_exited_child_not_yet_reaped_is_not_alive(spawn: Spawn) -> None:
    proc = spawn("pass")
    token = process_token(proc.pid)
    # Never waited for: the kernel keeps it as a zombie, which still has its pid.
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)

    assert not is_alive(proc.pid, token)
    assert not is_alive(proc.pid, None)


def test_terminate_stops_the_process_and_its_group(spawn: Spawn) -> None:
    # Like uvicorn with workers: the process started a child of its own in its session.
    code = (
        "import subprocess, sys, time\n"
        f"worker = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = spawn(code)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    token = process_token(proc.pid)

    assert terminate(proc.pid, token, timeout=10)

    assert not is_alive(proc.pid, token)
    deadline = time.monotonic() + 10
    while is_alive(worker, None):
        assert time.monotonic() < deadline, "the worker outlived the process it belonged to"
        time.sleep(0.05)
    # Stopped already: nothing left to stop.
    assert not terminate(proc.pid, token, timeout=1)


def test_terminate_kills_a_process_that_ignores_sigterm(spawn: Spawn) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = spawn(code)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    token = process_token(proc.pid)
    start = time.monotonic()

    assert terminate(proc.pid, token, timeout=0.5)

    assert not is_alive(proc.pid, token)
    assert time.monotonic() - start < 10


def test_terminate_leaves_a_process_with_another_token_alone(spawn: Spawn) -> None:
    proc = spawn()
    wrong = str(psutil.Process(proc.pid).create_time() - 3600)

    assert not terminate(proc.pid, wrong, timeout=1)

    # The record was not this process's: it must not have been signalled.
    time.sleep(0.2)
    assert proc.poll() is None
    assert is_alive(proc.pid, process_token(proc.pid))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_token_recorded_before_psutil_still_matches(spawn: Spawn) -> None:
    # Earlier versions recorded /proc's start time (clock ticks since boot): processes started
    # by them must still be recognised, or `mlops endpoint stop` would leave them running.
    proc = spawn()
    ticks = _ticks(proc.pid)

    assert is_alive(proc.pid, ticks)
    assert not is_alive(proc.pid, str(int(ticks) + 3600 * os.sysconf("SC_CLK_TCK")))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_wall_clock_step_does_not_make_a_live_process_look_gone(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh VM syncing its clock steps the wall clock by seconds; psutil's create time (boot
    # time plus ticks) moves with it. A CI run saw every live variant reported dead after one.
    proc = spawn()
    token = process_token(proc.pid)
    stepped = psutil.Process(proc.pid).create_time() + 30.0
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: stepped)

    assert is_alive(proc.pid, token)
    # A recycled pid still is not ours: its ticks differ, whatever the clock did.
    assert not is_alive(proc.pid, str(int(token or 0) + 1))
    # A token in create-time form (written without /proc) is matched within the window.
    assert is_alive(proc.pid, str(stepped - 1.0))
    assert not is_alive(proc.pid, str(stepped - 3600))


def _ticks(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[19]
