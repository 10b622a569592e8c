"""The sandbox that runs model-written Python for the solver's `python` tool, without Docker.

    sandbox = BubblewrapSandbox(SandboxLimits(wall_s=10))
    result = sandbox.run("print(6 * 7)")   # ExecResult(stdout='42\\n', exit_code=0, ...)
    kap sandbox run FILE [--json]          # the same from the shell

Each run is a fresh bubblewrap (`bwrap`, Debian's `bubblewrap`) container, in the spirit of
nanochat's `execution.py` but enforced by the kernel rather than by patching Python. The code
runs as `python -I -B -u /code/main.py` with the standard library only (no site-packages of
the worker), on the worker's interpreter or, when the sandbox uid cannot reach it (a pyenv
under /root), on /usr/bin/python3.

Protects against
- network use: a new, empty network namespace (only its own loopback), so the local
  PostgreSQL, Redis and Neo4j ports, abstract Unix sockets, DNS and the internet are unreachable;
- reading the worker's secrets: the environment is cleared before `bwrap` starts (else it
  would show in /proc/1/environ) and inside; no descriptor of the worker is inherited; the
  root holds only /usr and the interpreter's prefix (read-only binds), a synthetic /etc
  (passwd, group, hosts, ld.so.cache), /proc of its own pid namespace, a minimal /dev, the
  code and /scratch, so the repository, the state directory (`.kap`, `.kap-test`: service
  passwords), /root and /home (but for an interpreter prefix there) and the host's /tmp do not
  exist inside;
- writes outside /scratch: the root and /dev are remounted read-only; /scratch (and /tmp, a
  link to it) is a private tmpfs capped at `scratch_bytes` that vanishes with the run;
- seeing or signalling the worker's processes: new pid, IPC, UTS and cgroup namespaces;
- fork bombs: RLIMIT_NPROC, which the kernel counts per user namespace and uid but never
  enforces on host uid 0, so a root worker starts bwrap as the unprivileged `run_as` uid
  (65534, nobody): the sandbox never runs as root on the host;
- memory bombs (RLIMIT_AS per process), busy loops (RLIMIT_CPU: SIGXCPU, then SIGKILL), huge
  files (RLIMIT_FSIZE), descriptor exhaustion (RLIMIT_NOFILE), core dumps (RLIMIT_CORE=0);
- hanging or sleeping code: a wall-clock limit that SIGKILLs bwrap's process group; the pid
  namespace then takes every process of the run with it, daemonized ones included;
- flooding the worker: stdout and stderr are each kept up to `output_bytes` (marked truncated);
- privilege gain: no capabilities, no_new_privs (setuid binaries do nothing), no nested user
  namespaces (`--disable-userns`), a new session (no TIOCSTI injection into a terminal).

Does not protect against
- kernel or bubblewrap bugs: there is no seccomp filter, every system call reaches the kernel;
- side channels (timing, Spectre-class, shared CPU caches) and CPU contention with the worker;
- resource use below the limits, and their sums: up to `processes` x `memory_bytes` of memory
  plus `scratch_bytes` of tmpfs, and `processes` busy CPUs until `wall_s`;
- reading what any user may read under /usr and from /proc (kernel version, CPU, memory and
  load of the machine);
- code that is wrong or malicious in its *output*: results are data for the verifier, not trust.

Also: no writable /dev/shm, so `multiprocessing` locks fail; `exit_code` is shell-style, so a
program that exits with 128+N reads as killed by signal N.

Needs Linux with unprivileged user namespaces for the `run_as` uid (or the worker's own uid when
not root) and bubblewrap >= 0.8. When the machine cannot create the sandbox, `probe()` and
`run()` raise `SandboxError` saying what is missing: code never runs unsandboxed.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from kap.platform.errors import SandboxError

NOBODY = 65534
SCRATCH = "/scratch"
CODE_PATH = "/code/main.py"
PRLIMIT = Path("/usr/bin/prlimit")
SYSTEM_PYTHON = Path("/usr/bin/python3")
_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC = {
    "passwd": f"sandbox:x:{NOBODY}:{NOBODY}:sandbox:{SCRATCH}:/usr/sbin/nologin\n",
    "group": f"sandbox:x:{NOBODY}:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
}
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SCRATCH,
    "TMPDIR": SCRATCH,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_CHUNK = 1 << 16
_KILL_GRACE_S = 5.0
_PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """What one run may use. Logged whole by whoever builds it."""

    wall_s: float = field(default=10.0, metadata={"help": "Wall-clock seconds before SIGKILL."})
    cpu_s: int = field(default=10, metadata={"help": "CPU seconds per process (RLIMIT_CPU)."})
    memory_bytes: int = field(
        default=512 << 20, metadata={"help": "Address space per process (RLIMIT_AS)."}
    )
    processes: int = field(
        default=32, metadata={"help": "Processes and threads of the run (RLIMIT_NPROC)."}
    )
    file_bytes: int = field(
        default=16 << 20, metadata={"help": "Largest file the code may write (RLIMIT_FSIZE)."}
    )
    open_files: int = field(default=64, metadata={"help": "Open descriptors (RLIMIT_NOFILE)."})
    scratch_bytes: int = field(default=64 << 20, metadata={"help": "Size of the /scratch tmpfs."})
    output_bytes: int = field(
        default=1 << 20, metadata={"help": "Bytes kept of stdout and of stderr, each."}
    )


@dataclass(frozen=True)
class ExecResult:
    """What a run produced. `exit_code` follows the shell: 128+N when killed by signal N."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    killed_by: str | None
    wall_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class Sandbox(Protocol):
    """Runs untrusted Python source and reports what happened; never raises for what it did."""

    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> ExecResult: ...


def default_python() -> Path:
    """The worker's own interpreter when the sandbox user can reach it, else the system python3."""
    own = Path(sys.executable).resolve()
    if os.geteuid() != 0 or _world_readable(own) or not SYSTEM_PYTHON.exists():
        return own
    return SYSTEM_PYTHON.resolve()


def _world_readable(path: Path) -> bool:
    dirs_searchable = all(p.stat().st_mode & 0o001 for p in path.parents)
    return dirs_searchable and (path.stat().st_mode & 0o005) == 0o005


class BubblewrapSandbox:
    """`Sandbox` on bubblewrap: one fresh set of namespaces and limits per run."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        python: Path | None = None,
        *,
        bwrap: str = "bwrap",
        run_as: int = NOBODY,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python or default_python()
        self.bwrap = bwrap
        self.run_as = run_as
        self._ready = False

    # ---- checks ----

    def probe(self) -> None:
        """Create one sandbox and run `print(6 * 7)` in it, or raise `SandboxError` saying why."""
        if self._ready:
            return
        if shutil.which(self.bwrap) is None:
            raise SandboxError(
                f"bubblewrap is not installed (no `{self.bwrap}` executable): "
                "apt-get install bubblewrap"
            )
        for needed, package in ((PRLIMIT, "util-linux"), (self.python, "python3")):
            if not needed.is_file():
                raise SandboxError(f"{needed} is missing: apt-get install {package}")
        result = self._execute("print(6 * 7)", "", _PROBE_TIMEOUT_S)
        if result.exit_code != 0 or result.stdout != "42\n":
            uid = self.run_as if os.geteuid() == 0 else os.geteuid()
            raise SandboxError(_explain(result.stderr.strip(), uid))
        self._ready = True

    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> ExecResult:
        """Run `code` as a Python program with `stdin`; SIGKILL it after `timeout_s` seconds."""
        self.probe()
        timeout = self.limits.wall_s if timeout_s is None else timeout_s
        if timeout <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout}")
        return self._execute(code, stdin, timeout)

    # ---- one run ----

    def _execute(self, code: str, stdin: str, timeout_s: float) -> ExecResult:
        files = {"code": code, **_ETC}
        started = time.monotonic()
        with _memfds(files) as fds:
            argv = self.command(fds)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=tuple(fds.values()),
                    env={},
                    cwd="/",
                    start_new_session=True,
                    **self._drop_root(),
                )
            except OSError as exc:
                raise SandboxError(f"cannot start {self.bwrap}: {exc}") from exc
        pump = _Pump(proc, self.limits.output_bytes)
        timed_out = pump.run(stdin.encode(), started + timeout_s)
        exit_code, killed_by = _status(proc.returncode)
        return ExecResult(
            stdout=pump.out.text(),
            stderr=pump.err.text(),
            exit_code=exit_code,
            timed_out=timed_out,
            killed_by=killed_by,
            wall_s=round(time.monotonic() - started, 3),
            stdout_truncated=pump.out.truncated,
            stderr_truncated=pump.err.truncated,
        )

    def command(self, fds: Mapping[str, int]) -> list[str]:
        """The bwrap command line for one run, given the descriptors of its data files."""
        return [
            self.bwrap,
            *("--unshare-all", "--unshare-user", "--disable-userns"),
            *("--die-with-parent", "--new-session", "--hostname", "sandbox"),
            *("--uid", str(NOBODY), "--gid", str(NOBODY)),
            *self._filesystem(fds),
            *("--chdir", SCRATCH, "--clearenv"),
            *(arg for key, value in _ENV.items() for arg in ("--setenv", key, value)),
            "--",
            *_prlimit(self.limits),
            *(str(self.python), "-I", "-B", "-u", CODE_PATH),
        ]

    def _filesystem(self, fds: Mapping[str, int]) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for name in _USR_LINKS:
            top = Path("/") / name
            if top.is_symlink():
                args += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                args += ["--ro-bind", str(top), str(top)]
        prefix = self.python.parent.parent
        if prefix != Path("/") and not prefix.is_relative_to("/usr"):
            args += ["--ro-bind", str(prefix), str(prefix)]
        for name in _ETC:
            args += ["--ro-bind-data", str(fds[name]), f"/etc/{name}"]
        args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(self.limits.scratch_bytes), "--perms", "0700", "--tmpfs", SCRATCH]
        args += ["--symlink", SCRATCH, "/tmp", "--ro-bind-data", str(fds["code"]), CODE_PATH]
        # bwrap builds the root and /dev on writable tmpfs: freeze both once all is mounted.
        return [*args, "--remount-ro", "/dev", "--remount-ro", "/"]

    def _drop_root(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": self.run_as, "group": self.run_as, "extra_groups": []}


def _prlimit(limits: SandboxLimits) -> list[str]:
    return [
        str(PRLIMIT),
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_bytes}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def _status(returncode: int) -> tuple[int, str | None]:
    """Shell-style exit code and signal name; bwrap itself reports 128+N for a signalled child."""
    code = 128 - returncode if returncode < 0 else returncode
    if code > 128:
        with suppress(ValueError):
            return code, signal.Signals(code - 128).name
    return code, None


def _explain(stderr: str, uid: int) -> str:
    detail = stderr.splitlines()[-1] if stderr else "no error output"
    if "namespace" in stderr or "uid map" in stderr or "Operation not permitted" in stderr:
        return (
            f"cannot create the sandbox: {detail}. uid {uid} needs unprivileged user namespaces: "
            "sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 (older "
            "Debian kernels), kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu >= 23.10); "
            "inside Docker the default seccomp profile forbids them"
        )
    return f"cannot create the sandbox: {detail}"


@contextmanager
def _memfds(files: Mapping[str, str]) -> Iterator[dict[str, int]]:
    """Anonymous in-memory files for bwrap's `--ro-bind-data`: nothing touches the host disk."""
    fds: dict[str, int] = {}
    try:
        for name, text in files.items():
            fd = fds[name] = os.memfd_create(f"kap-sandbox-{name}", os.MFD_CLOEXEC)
            os.write(fd, text.encode())
            os.lseek(fd, 0, os.SEEK_SET)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


class _Capped:
    """The first `cap` bytes of a stream; the rest is drained and dropped (writers never block)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        self.data += chunk[: max(room, 0)]
        self.truncated |= len(chunk) > room

    def text(self) -> str:
        return self.data.decode(errors="replace")


class _Pump:
    """Feeds stdin and drains stdout/stderr of one process until it ends or its deadline."""

    def __init__(self, proc: subprocess.Popen[bytes], cap: int) -> None:
        self.proc = proc
        self.out = _Capped(cap)
        self.err = _Capped(cap)
        self.timed_out = False

    def run(self, data: bytes, deadline: float) -> bool:
        """Return whether the deadline killed the process group."""
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ, self.out)
            sel.register(self.proc.stderr, selectors.EVENT_READ, self.err)
            if data:
                os.set_blocking(self.proc.stdin.fileno(), False)
                sel.register(self.proc.stdin, selectors.EVENT_WRITE, memoryview(data))
            else:
                self.proc.stdin.close()
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self.timed_out:
                        break  # killed, yet the pipes stay open: stop waiting for them
                    self._kill()
                    deadline = time.monotonic() + _KILL_GRACE_S
                    continue
                for key, _ in sel.select(remaining):
                    self._step(sel, key)
        self._reap(deadline)
        return self.timed_out

    def _step(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        stream = cast(IO[bytes], key.fileobj)
        if isinstance(key.data, _Capped):
            chunk = os.read(stream.fileno(), _CHUNK)
            if chunk:
                key.data.add(chunk)
                return
        else:
            view: memoryview = key.data
            try:
                sent = os.write(stream.fileno(), view[:_CHUNK])
            except BlockingIOError:
                return
            except BrokenPipeError:
                sent = len(view)  # the program stopped reading: the rest is dropped
            if sent < len(view):
                sel.modify(stream, selectors.EVENT_WRITE, view[sent:])
                return
        sel.unregister(stream)
        stream.close()

    def _reap(self, deadline: float) -> None:
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self._kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _kill(self) -> None:
        """SIGKILL bwrap's process group; --die-with-parent and the pid namespace do the rest."""
        self.timed_out = True
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
