"""Throw-away PostgreSQL databases on a server kap can reach, for tests and benchmarks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def scratch_database(url: str, *, prefix: str = "kap_scratch") -> Iterator[str]:
    """Create an empty database beside the one `url` names; yield its URL; drop it after.

    The role in `url` needs CREATEDB (the local cluster's superuser `kap` has it).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # No pool: a connection opened before a server restart (tests restart it) is never reused.
    admin = sa.create_engine(
        sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )  # fmt: skip
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # name is ours, not user input
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
