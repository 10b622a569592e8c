"""Process and port helpers of the service supervisors, on real sockets and processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from kap.platform.services.process import (
    ensure_secret,
    log_tail,
    pid_alive,
    port_in_use,
    read_pid,
    terminate,
)


def test_a_listening_port_is_in_use_and_a_closed_one_is_not() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_a_port_bound_without_listening_is_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert port_in_use(sock.getsockname()[1])


def test_read_pid_refuses_a_reused_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    assert read_pid(pidfile, cmdline_contains="python") == os.getpid()
    assert read_pid(pidfile, cmdline_contains="redis-server") is None  # alive, but not ours


def test_read_pid_of_a_dead_process_or_garbage_is_none(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pidfile = tmp_path / "x.pid"
    pidfile.write_text(str(proc.pid))
    assert read_pid(pidfile, cmdline_contains="python") is None
    pidfile.write_text("not a pid")
    assert read_pid(pidfile, cmdline_contains="python") is None
    assert read_pid(tmp_path / "missing.pid", cmdline_contains="python") is None


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", stubborn], start_new_session=True, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    terminate(proc.pid, timeout=1, log=tmp_path / "log")
    assert proc.wait(timeout=10) == -9
    assert not pid_alive(proc.pid)


def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while pid_alive(proc.pid):  # exits; not yet reaped, so a zombie
        pass
    assert proc.poll() == 0


def test_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "svc"
    first = ensure_secret(path)
    assert len(first) >= 24
    assert ensure_secret(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_log_tail_shows_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert log_tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]
    assert log_tail(tmp_path / "none.log") == "(no log written)"
