"""Adversarial tests of the bubblewrap sandbox: each test is one thing hostile code must not do.

Needs `bwrap` (Debian's bubblewrap, installed by `make setup`); without it the tests skip, or
fail under CI=true. The worker runs as root here and in CI, the hard case for the process limit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kap.platform.errors import SandboxError
from kap.workers.sandbox import NOBODY, BubblewrapSandbox, ExecResult, SandboxLimits

REPO_ROOT = Path(__file__).resolve().parents[3]
KAP = str(Path(sys.executable).parent / "kap")
LIMITS = SandboxLimits(
    wall_s=5,
    cpu_s=3,
    memory_bytes=256 << 20,
    processes=16,
    file_bytes=1 << 20,
    scratch_bytes=8 << 20,
    output_bytes=64 << 10,
)
# The local services' ports: the demo's defaults and the tests' (tests/conftest.py).
SERVICE_PORTS = (55432, 55433, 6389, 6390, 7697, 7698, 5432, 6379, 7687)


@pytest.fixture(scope="module")
def sandbox() -> BubblewrapSandbox:
    box = BubblewrapSandbox(LIMITS)
    try:
        box.probe()
    except SandboxError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the sandbox cannot be created: {exc}")
        pytest.skip(f"the sandbox cannot be created: {exc}")
    return box


@pytest.fixture
def token() -> str:
    return f"kapcanary{uuid.uuid4().hex}"


def run(box: BubblewrapSandbox, code: str, **kwargs: Any) -> ExecResult:
    return box.run(textwrap.dedent(code), **kwargs)


def host_pids_with(marker: str) -> list[int]:
    """Processes on the host whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def spawn_tagged(code: str, tag: str) -> str:
    """Sandbox code that re-executes `code` with `tag` in its command line, to find it from here."""
    return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {code!r}, {tag!r}])\n"


# ---- it runs code ----


def test_runs_code_and_captures_stdout_stderr_and_exit_code(sandbox: BubblewrapSandbox) -> None:
    result = run(sandbox, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert not result.timed_out
    assert result.killed_by is None


def test_stdin_reaches_the_program(sandbox: BubblewrapSandbox) -> None:
    text = "line\n" * 50_000  # larger than a pipe buffer
    result = run(sandbox, "import sys; print(len(sys.stdin.read()))", stdin=text)
    assert result.stdout == f"{len(text)}\n"


def test_output_is_capped_and_marked_truncated(sandbox: BubblewrapSandbox) -> None:
    result = run(sandbox, "print('x' * (1 << 20))")
    assert result.stdout_truncated
    assert len(result.stdout) == LIMITS.output_bytes
    assert result.exit_code == 0


# ---- network ----


def test_loopback_services_of_the_host_are_unreachable(sandbox: BubblewrapSandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # open from the host
        ports = [port, *SERVICE_PORTS]
        result = run(
            sandbox,
            f"""
            import json, socket
            seen = {{}}
            for port in {ports!r}:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    seen[port] = "connected"
                except OSError as exc:
                    seen[port] = type(exc).__name__
            print(json.dumps(seen))
            """,
        )
    seen = json.loads(result.stdout)
    assert seen[str(port)] == "ConnectionRefusedError"
    assert "connected" not in seen.values()


def test_only_a_private_loopback_no_dns_no_routes(sandbox: BubblewrapSandbox) -> None:
    result = run(
        sandbox,
        """
        import socket
        print(socket.if_nameindex())
        for attempt in (lambda: socket.getaddrinfo("pypi.org", 443),
                        lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)):
            try:
                attempt()
                print("reached")
            except OSError as exc:
                print(type(exc).__name__)
        """,
    )
    interfaces, dns, route = result.stdout.splitlines()
    assert interfaces == "[(1, 'lo')]"
    assert dns == "gaierror"
    assert route == "OSError"  # ENETUNREACH


def test_abstract_unix_sockets_of_the_host_are_unreachable(
    sandbox: BubblewrapSandbox, token: str
) -> None:
    name = f"\0{token}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(name)
        listener.listen()
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(name)  # reachable from the host
        result = run(
            sandbox,
            f"""
            import socket
            try:
                socket.socket(socket.AF_UNIX).connect({name!r})
                print("connected")
            except OSError as exc:
                print(type(exc).__name__)
            """,
        )
    assert result.stdout == "ConnectionRefusedError\n"


# ---- processes, memory, time ----


def test_fork_bomb_is_capped_by_the_process_limit(sandbox: BubblewrapSandbox) -> None:
    result = run(
        sandbox,
        """
        import os, time
        children = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(10)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print(type(exc).__name__)
        print(children)
        """,
    )
    error, children = result.stdout.splitlines()
    assert error == "BlockingIOError"  # EAGAIN from RLIMIT_NPROC, even though the worker is root
    assert int(children) < LIMITS.processes
    assert result.wall_s < 5  # the sleeping children died with the run


def test_fork_bomb_is_killed_and_leaves_no_process(sandbox: BubblewrapSandbox, token: str) -> None:
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = run(sandbox, spawn_tagged(bomb, token), timeout_s=2)
    assert result.timed_out or result.killed_by is not None
    assert result.wall_s < 8
    assert host_pids_with(token) == []
    assert subprocess.run(["true"], check=False).returncode == 0  # the host can still fork


def test_memory_bomb_gets_memory_error(sandbox: BubblewrapSandbox) -> None:
    result = run(
        sandbox,
        """
        chunks = []
        try:
            while True:
                chunks.append(bytearray(16 << 20))
        except MemoryError:
            print(len(chunks) * 16)
        """,
    )
    assert result.exit_code == 0
    assert int(result.stdout) < LIMITS.memory_bytes >> 20  # MiB held when it stopped


def test_sleeping_code_is_killed_at_the_wall_clock_with_its_children(
    sandbox: BubblewrapSandbox, token: str
) -> None:
    code = f"""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", {token!r}],
                     start_new_session=True)
    print("started", flush=True)
    time.sleep(600)
    """
    result = run(sandbox, code, timeout_s=1)
    assert result.timed_out
    assert result.killed_by == "SIGKILL"
    assert 1 <= result.wall_s < 4
    assert result.stdout == "started\n"  # output before the kill is kept
    assert host_pids_with(token) == []


def test_busy_loop_hits_the_cpu_time_limit(sandbox: BubblewrapSandbox) -> None:
    box = BubblewrapSandbox(replace(LIMITS, cpu_s=1, wall_s=20))
    result = box.run("while True:\n    pass\n")
    assert result.killed_by == "SIGXCPU"
    assert not result.timed_out
    assert result.wall_s < 10


def test_sandboxed_processes_run_as_an_unprivileged_host_uid(
    sandbox: BubblewrapSandbox, token: str
) -> None:
    worker = threading.Thread(
        target=run, args=(sandbox, spawn_tagged("import time; time.sleep(2)", token))
    )
    worker.start()
    try:
        pids: list[int] = []
        for _ in range(100):
            if pids := host_pids_with(token):
                break
            time.sleep(0.02)
        assert pids, "the sandboxed process never showed up"
        status = Path(f"/proc/{pids[0]}/status").read_text()
    finally:
        worker.join()
    real_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert real_uid == (NOBODY if os.geteuid() == 0 else os.geteuid())
    assert real_uid != 0  # the kernel does not apply RLIMIT_NPROC to uid 0


# ---- files ----


def test_writes_outside_scratch_fail(sandbox: BubblewrapSandbox) -> None:
    targets = ["/x", "/usr/x", "/usr/bin/python3", "/etc/x", "/etc/passwd", "/code/main.py"]
    targets += ["/code/x", "/dev/x", "/dev/shm/x", "/proc/x", f"{REPO_ROOT}/x"]
    result = run(
        sandbox,
        f"""
        for path in {targets!r}:
            try:
                open(path, "a").close()
                print(path, "written")
            except OSError as exc:
                print(path, type(exc).__name__)
        """,
    )
    assert len(result.stdout.splitlines()) == len(targets)
    assert "written" not in result.stdout


def test_host_tmp_is_invisible_and_untouched(
    sandbox: BubblewrapSandbox, tmp_path: Path, token: str
) -> None:
    canary = tmp_path / "canary"
    canary.write_text(token)
    result = run(
        sandbox,
        f"""
        import os
        print(os.path.exists({str(canary)!r}))
        open("/tmp/{token}", "w").write("x")
        print(sorted(os.listdir("/tmp")))
        """,
    )
    assert result.stdout == f"False\n['{token}']\n"
    assert not (Path("/tmp") / token).exists()


def test_scratch_is_writable_and_private_to_one_run(sandbox: BubblewrapSandbox) -> None:
    first = run(sandbox, "open('/scratch/kept', 'w').write('x'); import os; print(os.listdir())")
    second = run(sandbox, "import os; print(os.listdir('/scratch'))")
    assert first.stdout == "['kept']\n"
    assert second.stdout == "[]\n"


def test_scratch_space_is_capped(sandbox: BubblewrapSandbox) -> None:
    result = run(
        sandbox,
        """
        written = 0
        try:
            for i in range(100):
                with open(f"/scratch/{i}", "wb") as f:
                    f.write(bytes(512 << 10))
                written += 512 << 10
        except OSError as exc:
            print(exc.errno, written)
        """,
    )
    errno, written = map(int, result.stdout.split())
    assert errno == 28  # ENOSPC
    assert written <= LIMITS.scratch_bytes


def test_file_size_limit(sandbox: BubblewrapSandbox) -> None:
    result = run(
        sandbox,
        """
        import os
        try:
            with open("big", "wb") as f:
                f.write(bytes(2 << 20))
        except OSError as exc:
            print(exc.errno, os.path.getsize("big"))
        """,
    )
    errno, size = map(int, result.stdout.split())
    assert errno == 27  # EFBIG
    assert size <= LIMITS.file_bytes


def test_root_holds_only_the_allowlisted_directories(sandbox: BubblewrapSandbox) -> None:
    allowed = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}
    allowed |= {"etc", "proc", "dev", "scratch", "tmp", "code"}
    prefix = sandbox.python.parent.parent
    if not prefix.is_relative_to("/usr"):
        allowed.add(prefix.parts[1])
    result = run(sandbox, "import os; print(sorted(os.listdir('/'))); print(os.listdir('/etc'))")
    top, etc = (eval(line) for line in result.stdout.splitlines())
    assert set(top) <= allowed
    assert set(etc) <= {"passwd", "group", "hosts", "ld.so.cache"}


# ---- secrets ----


def test_worker_environment_is_invisible(
    sandbox: BubblewrapSandbox, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("KAP_SECRET_CANARY", token)
    result = run(
        sandbox,
        """
        import glob, os
        print(sorted(os.environ))
        for path in {"/proc/1/environ", f"/proc/{os.getppid()}/environ",
                     *glob.glob("/proc/*/environ")}:
            try:
                print(path, open(path, "rb").read())
            except OSError as exc:
                print(path, type(exc).__name__)
        """,
    )
    assert token not in result.stdout + result.stderr
    names = eval(result.stdout.splitlines()[0])
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PWD"}
    assert "/proc/1/environ" in result.stdout


def test_service_passwords_are_not_inside(
    sandbox: BubblewrapSandbox, tmp_path: Path, token: str
) -> None:
    fake = tmp_path / "state" / "secrets" / "postgres"
    fake.parent.mkdir(parents=True)
    fake.write_text(token)
    assert fake.read_text() == token  # readable from the worker
    paths = [str(fake), str(REPO_ROOT), "/root", "/home"]
    for state in (".kap", ".kap-test"):
        secrets = REPO_ROOT / state / "secrets"
        paths += [str(secrets), *(str(p) for p in sorted(secrets.glob("*")))]
    result = run(
        sandbox,
        f"""
        for path in {paths!r}:
            try:
                print(path, open(path).read())
            except OSError as exc:
                print(path, type(exc).__name__)
        """,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths)
    assert all(line.endswith("FileNotFoundError") for line in lines), lines
    assert token not in result.stdout


# ---- isolation from the host ----


def test_host_processes_are_invisible_and_unsignalable(sandbox: BubblewrapSandbox) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        result = run(
            sandbox,
            f"""
            import os, signal
            print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
            try:
                os.kill({victim.pid}, signal.SIGKILL)
            except OSError as exc:
                print(type(exc).__name__)
            try:
                os.kill(-1, signal.SIGKILL)  # everyone it can reach, but itself
            except OSError as exc:
                print(type(exc).__name__)
            """,
        )
        assert victim.poll() is None  # still alive
    finally:
        victim.kill()
        victim.wait()
    pids, *_ = result.stdout.splitlines()
    assert max(eval(pids)) < 10  # its own pid namespace
    assert os.getpid() not in eval(pids)


def test_no_privileges_inside(sandbox: BubblewrapSandbox) -> None:
    result = run(
        sandbox,
        """
        import os, subprocess
        lines = open("/proc/self/status").read().splitlines()
        status = dict(line.split(":\\t", 1) for line in lines)
        print(status["CapEff"], status["NoNewPrivs"])
        try:
            os.setuid(0)
            print("root")
        except OSError as exc:
            print(type(exc).__name__)  # EINVAL: no uid 0 exists in its user namespace
        print(subprocess.run(["unshare", "--user", "true"]).returncode)
        """,
    )
    caps, setuid, nested_userns = result.stdout.splitlines()
    assert caps == "0000000000000000 1"
    assert setuid != "root"
    assert nested_userns != "0"


# ---- failing closed ----


def test_missing_bwrap_raises_and_never_runs_the_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    box = BubblewrapSandbox(LIMITS, bwrap=str(tmp_path / "no-bwrap"))
    with pytest.raises(SandboxError, match=r"bubblewrap is not installed.*apt-get install"):
        box.run(f"open({str(marker)!r}, 'w')")
    assert not marker.exists()


def test_a_bwrap_that_cannot_create_the_sandbox_raises(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    box = BubblewrapSandbox(LIMITS, bwrap="/usr/bin/false")
    with pytest.raises(SandboxError, match="cannot create the sandbox"):
        box.run(f"open({str(marker)!r}, 'w')")
    assert not marker.exists()


# ---- the command ----


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "program.py"
    path.write_text("import sys\nprint('hi')\nprint('oops', file=sys.stderr)\nsys.exit(4)\n")
    yield path


def test_kap_sandbox_run_json(sandbox: BubblewrapSandbox, program: Path) -> None:
    result = subprocess.run(
        [KAP, "sandbox", "run", str(program), "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "stdout": "hi\n",
        "stderr": "oops\n",
        "exit_code": 4,
        "timed_out": False,
    }


def test_kap_sandbox_run_without_bwrap_fails_with_one_error(program: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    result = subprocess.run(
        [KAP, "sandbox", "run", str(program)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: bubblewrap is not installed")
