"""Engines and sessions for the trajectory store; callers pass the URL (built from `Settings`).

    engine = make_engine(settings.resolved_database_url())
    with session_scope(make_sessionmaker(engine)) as session:
        session.add(...)

An engine owns a connection pool: make one per process. A Celery prefork worker must build it
after the fork (e.g. in `worker_process_init`), never inherit the parent's pooled sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_recycle_s: int = 1800,
    application_name: str = "kap",
    echo: bool = False,
) -> Engine:
    """A pooled engine that survives database restarts (pre-ping) and idle-closing proxies."""
    connect_args: dict[str, str] = {}
    if "application_name" not in make_url(url).query:  # shows up in pg_stat_activity
        connect_args["application_name"] = application_name
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=pool_recycle_s,
        connect_args=connect_args,
        echo=echo,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (tasks return ids and small dicts)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block ends, roll back if it raises, always close."""
    with factory.begin() as session:
        yield session
