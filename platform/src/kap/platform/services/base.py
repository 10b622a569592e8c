"""What every local service supervisor provides, and the status it reports."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kap.platform.errors import ServiceError
from kap.platform.services.process import log_tail, port_in_use
from kap.platform.settings import Settings


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    up: bool
    local: bool
    port: int | None
    pid: int | None
    log: str | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LocalService(abc.ABC):
    """A server kap starts under its state directory on its own loopback port."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def data_dir(self) -> Path:
        return self.settings.service_dir(self.name)

    @property
    def log_path(self) -> Path:
        return self.settings.log_dir / f"{self.name}.log"

    @property
    @abc.abstractmethod
    def port(self) -> int: ...

    @abc.abstractmethod
    def running_pid(self) -> int | None:
        """The pid of our own server process, if it runs."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server; return once it is healthy or raise ServiceError naming the log."""

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def healthy(self) -> bool:
        """True when the server answers an authenticated request."""

    def up(self) -> bool:
        """Start unless already running; True when this call started it."""
        running = self.running_pid() is not None
        if running and self.healthy():
            return False
        if not running and port_in_use(self.port):
            raise ServiceError(
                f"{self.name}: port {self.port} on 127.0.0.1 is already in use by another "
                f"process; free it or set KAP_{self.name.upper()}_PORT (log: {self.log_path})"
            )
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        self.start()
        return True

    def down(self) -> bool:
        """Stop if running; True when this call stopped it."""
        if self.running_pid() is None:
            return False
        self.stop()
        return True

    def status(self) -> ServiceStatus:
        pid = self.running_pid()
        up = pid is not None and self.healthy()
        return ServiceStatus(
            self.name, up=up, local=True, port=self.port, pid=pid, log=str(self.log_path)
        )

    def failure(self, what: str) -> ServiceError:
        return ServiceError(
            f"{self.name}: {what}; see the log {self.log_path}:\n{log_tail(self.log_path)}"
        )
