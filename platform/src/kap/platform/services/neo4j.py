"""Neo4j Community 5.26, embedded in the launcher of `graphstore/neo4j-local/`, Bolt on loopback.

The launcher is a Maven project; its jar is built on first use when missing (Maven Central
holds every artifact). Authentication is on: the launcher sets the password of user `neo4j`
to the one generated under `secrets/neo4j` at every start.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import neo4j
from neo4j.exceptions import AuthError, DriverError, Neo4jError, ServiceUnavailable

from kap.platform.paths import repo_root
from kap.platform.services.base import LocalService
from kap.platform.services.process import (
    ensure_secret,
    pid_alive,
    read_pid,
    terminate,
    wait_until,
)

LAUNCHER_MARK = "neo4j-local"


def launcher_project() -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError(
            "the Neo4j launcher ships with the kap source tree (graphstore/neo4j-local); "
            "set KAP_NEO4J_URI to use an existing Neo4j server"
        )
    return root / "graphstore" / "neo4j-local"


def launcher_jar() -> Path:
    return launcher_project() / "target" / "neo4j-local.jar"


def build_launcher(*, log: Path) -> Path:
    """`mvn package` the launcher (downloads Neo4j from Maven Central on a cold cache)."""
    project = launcher_project()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FileNotFoundError("Maven (`mvn`) not found: install Debian's `maven` package")
    with log.open("a") as out:
        result = subprocess.run(
            [mvn, "-B", "-q", "-DskipTests", "package"], cwd=project, stdout=out,
            stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"the Maven build of {project} failed; see {log}")
    return launcher_jar()


class Neo4j(LocalService):
    name = "neo4j"

    @property
    def port(self) -> int:
        return self.settings.neo4j_port

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "neo4j.pid"

    def running_pid(self) -> int | None:
        return read_pid(self.pid_path, cmdline_contains=LAUNCHER_MARK)

    def healthy(self) -> bool:
        secret = self.settings.secret_path("neo4j")
        if not secret.exists():
            return False
        auth = (self.settings.neo4j_user, secret.read_text().strip())
        try:
            with neo4j.GraphDatabase.driver(
                f"bolt://127.0.0.1:{self.port}", auth=auth, connection_timeout=3
            ) as driver:
                driver.verify_connectivity()
        except (ServiceUnavailable, AuthError, DriverError, Neo4jError, OSError):
            return False
        return True

    def start(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise self.failure("java not found: install a Java 17 runtime (openjdk-17-jre)")
        jar = launcher_jar()
        if not jar.exists():
            try:
                jar = build_launcher(log=self.settings.log_dir / "neo4j-launcher-build.log")
            except (FileNotFoundError, RuntimeError) as exc:
                raise self.failure(str(exc)) from exc
        password_file = self.settings.secret_path("neo4j")
        ensure_secret(password_file)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            java, f"-Xmx{self.settings.neo4j_heap}", "-jar", str(jar),
            "--home", str(self.data_dir), "--bolt-port", str(self.port),
            "--bolt-address", "127.0.0.1", "--password-file", str(password_file),
            "--pagecache", self.settings.neo4j_pagecache,
        ]  # fmt: skip
        with self.log_path.open("a") as log:
            log.write(f"\n---- kap: starting {' '.join(cmd)} at {time.ctime()} ----\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid_path.write_text(f"{proc.pid}\n")
        if not wait_until(lambda: self._started(proc), timeout=self.settings.service_timeout):
            terminate(proc.pid, timeout=30, log=self.log_path)
            raise self.failure(f"not healthy after {self.settings.service_timeout:.0f}s")

    def _started(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise self.failure(f"the launcher exited with code {proc.returncode} during start")
        return self.healthy()

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        terminate(pid, timeout=self.settings.service_timeout, log=self.log_path)
        if not pid_alive(pid):
            self.pid_path.unlink(missing_ok=True)
