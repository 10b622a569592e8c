"""Alembic environment of kap: where the database URL and the target metadata come from.

An entry point: `uv run alembic upgrade head` at the repository root, or
`kap.platform.db.migrate.upgrade(url)` from Python. The URL is, in order: a connection or URL
the caller put in `config.attributes` ("connection", "database_url"), the `sqlalchemy.url`
option, else `Settings().resolved_database_url()` (KAP_DATABASE_URL or the local cluster).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from kap.platform.db.models import Base
from kap.platform.settings import Settings

config = context.config
target_metadata = Base.metadata

# Only for the alembic command line: fileConfig would reset a calling program's loggers.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else Settings().resolved_database_url()


# Alembic compares types, nullability, server defaults, tables, columns, indexes, unique and
# foreign keys, but never CHECK constraints: the migration tests compare those by name.
COMPARE_SERVER_DEFAULT = True


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the DDL instead of running it."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=COMPARE_SERVER_DEFAULT,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=COMPARE_SERVER_DEFAULT,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller's open connection (and transaction) is reused
        run_on(connection)
        return
    engine = create_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
