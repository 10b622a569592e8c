"""A PostgreSQL cluster under the state directory, made with Debian's initdb and run by pg_ctl.

PostgreSQL refuses to run as root, so when kap runs as root the cluster belongs to the
`postgres` system user that Debian's package creates and every server command runs through
`runuser`. The server listens on 127.0.0.1 only, with no Unix socket (socket paths have a
length limit that deep state directories exceed), and password (SCRAM) authentication for
the superuser `kap`, whose generated password is kept under `secrets/postgres`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg

from kap.platform.services.base import LocalService
from kap.platform.services.process import ensure_secret, read_pid

SUPERUSER = "kap"
DATABASE = "kap"


def postgres_bindir() -> Path:
    """Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin; take the newest."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` "
        "package (`make setup` does), or set KAP_DATABASE_URL to use an existing server"
    )


class Postgres(LocalService):
    name = "postgres"

    @property
    def port(self) -> int:
        return self.settings.postgres_port

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "data"

    # ---- running commands as the cluster owner ----

    def _owner(self) -> pwd.struct_passwd | None:
        """The system user that owns the cluster when we are root; None to run as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise self.failure(
                "running as root needs the `postgres` system user (Debian's postgresql package)"
            ) from None

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._owner() is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def _give_to_owner(self, path: Path) -> None:
        owner = self._owner()
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    # ---- lifecycle ----

    def running_pid(self) -> int | None:
        return read_pid(self.cluster_dir / "postmaster.pid", cmdline_contains="postgres")

    def healthy(self) -> bool:
        return self._query("SELECT 1", dbname="postgres") is not None

    def start(self) -> None:
        bindir = postgres_bindir()
        password = ensure_secret(self.settings.secret_path("postgres"))
        if not (self.cluster_dir / "PG_VERSION").exists():
            self._initdb(bindir, password)
        self.log_path.touch()
        self._give_to_owner(self.log_path)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        timeout = str(int(self.settings.service_timeout))
        result = self._run(
            bindir / "pg_ctl", "start", "-w", "-t", timeout, "-D", self.cluster_dir,
            "-l", self.log_path, "-o", options,
        )  # fmt: skip
        if result.returncode != 0:
            raise self.failure(f"pg_ctl start failed: {result.stderr.strip() or result.stdout}")
        if not self.healthy():
            raise self.failure("server started but refuses the kap superuser's password")
        self._ensure_database()

    def _initdb(self, bindir: Path, password: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._give_to_owner(self.data_dir)
        self._check_reachable_by_owner()
        pwfile = self.data_dir / ".pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        self._give_to_owner(pwfile)
        try:
            result = self._run(
                bindir / "initdb", "-D", self.cluster_dir, "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            self.log_path.write_text(result.stdout + result.stderr)
            raise self.failure("initdb failed")

    def _check_reachable_by_owner(self) -> None:
        if self._owner() is None:
            return
        probe = self._run("test", "-w", self.data_dir)
        if probe.returncode != 0:
            raise self.failure(
                f"the `postgres` user cannot reach {self.data_dir} (a parent folder is not "
                "searchable by other users); set KAP_HOME to a folder outside /root"
            )

    def _ensure_database(self) -> None:
        exists = self._query(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", "postgres")
        if not exists:
            self._query(f'CREATE DATABASE "{DATABASE}"', dbname="postgres")

    def stop(self) -> None:
        timeout = str(int(self.settings.service_timeout))
        result = self._run(
            postgres_bindir() / "pg_ctl", "stop", "-w", "-t", timeout, "-m", "fast",
            "-D", self.cluster_dir,
        )  # fmt: skip
        if result.returncode != 0:
            raise self.failure(f"pg_ctl stop failed: {result.stderr.strip()}")

    def _query(self, sql: str, dbname: str) -> list[tuple[object, ...]] | None:
        """Run one statement as the superuser; None when the server can't be reached."""
        secret = self.settings.secret_path("postgres")
        if not secret.exists():
            return None
        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=dbname,
                password=secret.read_text().strip(), connect_timeout=3, autocommit=True,
            ) as conn:  # fmt: skip
                cur = conn.execute(sql.encode())
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            return None
