"""The explorer's connections: PostgreSQL through the read-only role, Neo4j in read sessions,
and the Celery app for the few actions that write (launch, cancel, save a dataset).

Every resource is cached per process with `st.cache_resource`, keyed by where it points, so a
page run never opens a new pool and a changed environment (tests) never reuses a stale one.
The UI holds no write credentials for the stores: what changes data is a Celery task that a
`kap worker` runs with its own.

A store that cannot be reached surfaces as one line (`unreachable()`), naming the store and
how to start the local services, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import neo4j
import sqlalchemy as sa
import streamlit as st
from kombu.exceptions import OperationalError as BrokerError

from kap.platform.errors import ConfigError
from kap.platform.settings import Settings

# What a page run may raise when a store is down; the frame turns it into `unreachable()`.
UNREACHABLE: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    neo4j.exceptions.ServiceUnavailable,
    neo4j.exceptions.SessionExpired,
    neo4j.exceptions.AuthError,
    BrokerError,
    ConfigError,
)
START_HINT = "start the local services with `kap services up`"


def settings() -> Settings:
    """The settings of this run, from the `KAP_*` environment (cheap: read each run)."""
    return Settings()


def curation_url(config: Settings) -> str:
    """The URL the explorer reads PostgreSQL with: the read-only curator role."""
    return config.resolved_curator_url()


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> sa.Engine:
    from kap.platform.db.session import make_engine

    return make_engine(url, pool_size=2, max_overflow=2, application_name="kap-ui")


def engine() -> sa.Engine:
    """The pooled read-only engine of this process."""
    return _engine(db())


@st.cache_resource(show_spinner=False)
def _driver(uri: str, user: str, password: str) -> neo4j.Driver:
    from kap.graphstore.connection import connect

    return connect(Settings(neo4j_uri=uri, neo4j_user=user, neo4j_password=password))


def driver() -> neo4j.Driver:
    """The Neo4j driver of this process; open sessions with `read()`."""
    config = settings()
    uri = config.resolved_neo4j_uri()
    return _driver(uri, config.neo4j_user, config.resolved_neo4j_password())


def db() -> str:
    """The address of the read-only PostgreSQL: the cache key of every SQL query."""
    return curation_url(settings())


def graph() -> str:
    """The address of Neo4j: the cache key of every Cypher query."""
    config = settings()
    return f"{config.resolved_neo4j_uri()}/{config.neo4j_database}"


def database() -> str:
    return settings().neo4j_database


def read(cypher: str, /, **params: Any) -> list[dict[str, Any]]:
    """Run one Cypher query in a read session (the server refuses writes); rows as dicts.

    Auto-commit, not a retried transaction function: a page should say at once that Neo4j is
    down rather than retry for the driver's 30 s."""
    with driver().session(database=database(), default_access_mode=neo4j.READ_ACCESS) as session:
        return [r.data() for r in session.run(cypher, params)]


def graph_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a `kap.graphstore` function that takes (driver, ..., database=...)."""
    return fn(driver(), *args, database=database(), **kwargs)


@st.cache_resource(show_spinner=False)
def _celery(broker_key: str, _config: Settings) -> Any:
    from kap.platform.queue import configure

    return configure(_config, load_tasks=False)


def celery() -> Any:
    """The kap Celery app pointed at the configured broker (tasks are sent by name)."""
    config = settings()
    return _celery(config.resolved_broker_url(), config)


def unreachable(exc: BaseException) -> str:
    """One line naming the store that failed and how to start it."""
    if isinstance(exc, ConfigError):
        return f"Configuration: {exc}"
    if isinstance(exc, sa.exc.DBAPIError):
        where, detail = "PostgreSQL", str(exc.orig).strip().splitlines()[0] if exc.orig else ""
    elif isinstance(exc, neo4j.exceptions.Neo4jError | neo4j.exceptions.DriverError):
        where, detail = "Neo4j", str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    else:
        where, detail = "Redis (the Celery broker)", str(exc).strip().splitlines()[0]
    detail = detail[:200]
    return f"{where} is unreachable ({detail}): {START_HINT}, then reload this page."
