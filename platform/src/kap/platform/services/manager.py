"""Starts, stops and reports the local services: `kap services up | down | status [--json]`.

A service whose URL is set in the environment (KAP_NEO4J_URI, KAP_DATABASE_URL,
KAP_BROKER_URL) is an existing server: the manager never starts or stops it, it only checks
that it answers. Every call is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import neo4j
import redis
import sqlalchemy as sa

from kap.platform.errors import ConfigError, ServiceError
from kap.platform.services.base import LocalService, ServiceStatus
from kap.platform.services.neo4j import Neo4j
from kap.platform.services.postgres import Postgres
from kap.platform.services.redis import Redis
from kap.platform.settings import Settings

SERVICE_NAMES = ("postgres", "redis", "neo4j")
Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class ServiceManager:
    def __init__(self, settings: Settings, *, report: Report = _quiet) -> None:
        self.settings = settings
        self.report = report
        self.local: dict[str, LocalService] = {}
        if settings.local_postgres:
            self.local["postgres"] = Postgres(settings)
        if settings.local_redis:
            self.local["redis"] = Redis(settings)
        if settings.local_neo4j:
            self.local["neo4j"] = Neo4j(settings)

    def _select(self, names: Iterable[str] | None) -> list[str]:
        chosen = list(names) if names else list(SERVICE_NAMES)
        unknown = [n for n in chosen if n not in SERVICE_NAMES]
        if unknown:
            raise ConfigError(f"unknown service {unknown[0]!r}; choose from {SERVICE_NAMES}")
        return chosen

    def up(self, names: Iterable[str] | None = None) -> None:
        """Bring every selected service up, all at once (Neo4j's JVM start dominates)."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        chosen = self._select(names)
        with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
            futures = {name: pool.submit(self._up_one, name) for name in chosen}
        for future in futures.values():
            error = future.exception()
            if error is not None:
                raise error  # the first failed service, in the order they were named

    def _up_one(self, name: str) -> None:
        began = time.monotonic()
        service = self.local.get(name)
        if service is None:
            if not self._external_up(name):
                raise ServiceError(f"{name}: the existing server configured is not reachable")
            self.report(f"{name}: existing server reachable")
            return
        started = service.up()
        took = time.monotonic() - began
        verb = f"started in {took:.1f}s" if started else "already running"
        self.report(f"{name}: {verb} on 127.0.0.1:{service.port}")

    def down(self, names: Iterable[str] | None = None) -> None:
        for name in reversed(self._select(names)):
            service = self.local.get(name)
            if service is None:
                self.report(f"{name}: existing server, left alone")
                continue
            stopped = service.down()
            self.report(f"{name}: {'stopped' if stopped else 'not running'}")

    def statuses(self) -> list[ServiceStatus]:
        out = []
        for name in SERVICE_NAMES:
            service = self.local.get(name)
            if service is not None:
                out.append(service.status())
            else:
                up = self._external_up(name)
                out.append(ServiceStatus(name, up=up, local=False, port=None, pid=None, log=None))
        return out

    def facts(self) -> dict[str, Any]:
        """Connection facts and the state of each service, as `status --json` prints them."""
        s = self.settings
        facts: dict[str, Any] = {"state_dir": str(s.state_dir)}
        facts["neo4j_uri"] = s.resolved_neo4j_uri()
        facts["neo4j_user"] = s.neo4j_user
        facts["neo4j_password"] = _or_none(s.resolved_neo4j_password)
        facts["database_url"] = _or_none(s.resolved_database_url)
        facts["broker_url"] = _or_none(s.resolved_broker_url)
        facts["services"] = {st.name: st.to_json() for st in self.statuses()}
        return facts

    # ---- existing servers ----

    def _external_up(self, name: str) -> bool:
        try:
            _CHECKS[name](self.settings)
            return True
        except Exception:  # any failure to connect means "not up" for a status report
            return False


def probe(settings: Settings) -> dict[str, Any]:
    """Run one trivial query on each store: `RETURN 1`, `SELECT 1`, `PING`."""
    return {
        "neo4j": _guarded("neo4j", settings.resolved_neo4j_uri(), lambda: _neo4j_one(settings)),
        "postgres": _guarded("postgres", "PostgreSQL", lambda: _postgres_one(settings)),
        "redis": _guarded("redis", "Redis", lambda: _redis_ping(settings)),
    }


def _guarded(name: str, where: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return run()
    except (neo4j.exceptions.DriverError, neo4j.exceptions.Neo4jError, sa.exc.SQLAlchemyError,
            redis.RedisError, OSError) as exc:  # fmt: skip
        raise ServiceError(
            f"{name}: {where} did not answer ({type(exc).__name__}: {exc}); "
            "is it up? (`kap services status`)"
        ) from exc


def _neo4j_one(settings: Settings) -> dict[str, Any]:
    auth = (settings.neo4j_user, settings.resolved_neo4j_password())
    uri = settings.resolved_neo4j_uri()
    with neo4j.GraphDatabase.driver(uri, auth=auth, connection_timeout=5) as driver:
        driver.verify_connectivity()
        records = driver.execute_query("RETURN 1 AS one", database_=settings.neo4j_database)
        info = driver.get_server_info()
    return {"RETURN 1": records.records[0]["one"], "agent": info.agent}


def _postgres_one(settings: Settings) -> dict[str, Any]:
    engine = sa.create_engine(settings.resolved_database_url(), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            one = conn.execute(sa.text("SELECT 1")).scalar()
            version = conn.execute(sa.text("SHOW server_version")).scalar()
    finally:
        engine.dispose()
    return {"SELECT 1": one, "server_version": version}


def _redis_ping(settings: Settings) -> dict[str, Any]:
    client = redis.Redis.from_url(settings.resolved_broker_url(), socket_connect_timeout=5)
    try:
        return {"PING": bool(client.ping())}
    finally:
        client.close()


def _or_none(get: Callable[[], str]) -> str | None:
    try:
        return get()
    except ConfigError:
        return None


# An existing server is up when the same trivial query `probe` runs on it succeeds.
_CHECKS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "postgres": _postgres_one,
    "redis": _redis_ping,
    "neo4j": _neo4j_one,
}
