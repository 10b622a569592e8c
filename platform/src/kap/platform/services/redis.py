"""Redis for Celery's broker: Debian's redis-server on its own loopback port, no persistence.

The generated password lives in a config file (mode 0600) under the state directory rather
than on the command line, where any local user could read it from the process list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import redis

from kap.platform.services.base import LocalService
from kap.platform.services.process import ensure_secret, read_pid, terminate, wait_until


class Redis(LocalService):
    name = "redis"

    @property
    def port(self) -> int:
        return self.settings.redis_port

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    def running_pid(self) -> int | None:
        return read_pid(self.pid_path, cmdline_contains="redis-server")

    def healthy(self) -> bool:
        secret = self.settings.secret_path("redis")
        if not secret.exists():
            return False
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=secret.read_text().strip(),
            socket_timeout=3, socket_connect_timeout=3,
        )  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _write_config(self, password: str) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    "daemonize yes",
                    f"pidfile {self.pid_path}",
                    f"logfile {self.log_path}",
                    f"dir {self.data_dir}",
                    # A broker, not a database: nothing is written to disk.
                    'save ""',
                    "appendonly no",
                    f"requirepass {password}",
                    "",
                ]
            )
        )
        os.chmod(conf, 0o600)
        return conf

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise self.failure(
                "redis-server not found: install Debian's `redis-server` package (`make setup` "
                "does), or set KAP_BROKER_URL to use an existing Redis"
            )
        conf = self._write_config(ensure_secret(self.settings.secret_path("redis")))
        self.pid_path.unlink(missing_ok=True)
        result = subprocess.run([binary, str(conf)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise self.failure(f"redis-server exited {result.returncode}: {result.stderr.strip()}")
        if not wait_until(self._started, timeout=self.settings.service_timeout):
            raise self.failure(f"not healthy after {self.settings.service_timeout:.0f}s")

    def _started(self) -> bool:
        if self.pid_path.exists() and self.running_pid() is None:
            raise self.failure("redis-server exited during start")
        return self.healthy()

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is not None:
            terminate(pid, timeout=self.settings.service_timeout, log=self.log_path)
