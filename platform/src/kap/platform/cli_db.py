"""`kap db upgrade | downgrade REV | current | check`: the PostgreSQL schema through Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from kap.platform.errors import DatabaseError

db_app = typer.Typer(help="Migrate and inspect the PostgreSQL schema.", no_args_is_help=True)
console = Console(stderr=True)
CURATOR_REVISION = "0006"  # the migration that creates the read-only role


def _url(ctx: typer.Context) -> str:
    return str(ctx.obj.resolved_database_url())


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """Turn "cannot connect" into one line naming the server (password hidden)."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.OperationalError as exc:
        where = sa.make_url(url).render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseError(f"cannot reach PostgreSQL at {where}: {reason}") from None


@db_app.command()
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from kap.platform.db import migrate  # lazy: Alembic is slow to import

    with _reaching(_url(ctx)):
        migrate.upgrade(_url(ctx), revision, migrations_dir=ctx.obj.migrations_dir)
        at = migrate.current(_url(ctx))
        console.print(f"database at revision {at}")
        if at is not None and at >= CURATOR_REVISION:
            from kap.platform.curation.access import provision_local_curator

            if provision_local_curator(ctx.obj):
                console.print("read-only role kap_curator: password set from the state dir")


@db_app.command()
def downgrade(
    ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")]
) -> None:
    """Revert migrations down to REVISION (`base` for an empty schema, `-1` for one step)."""
    from kap.platform.db import migrate  # lazy: Alembic is slow to import

    with _reaching(_url(ctx)):
        migrate.downgrade(_url(ctx), revision, migrations_dir=ctx.obj.migrations_dir)
        console.print(f"database at revision {migrate.current(_url(ctx))}")


@db_app.command()
def current(ctx: typer.Context) -> None:
    """Print the current revision."""
    from kap.platform.db import migrate  # lazy: Alembic is slow to import

    with _reaching(_url(ctx)):
        typer.echo(migrate.current(_url(ctx)) or "base")


@db_app.command()
def check(ctx: typer.Context) -> None:
    """Fail when the models and the migrations disagree."""
    from kap.platform.db import migrate  # lazy: Alembic is slow to import

    with _reaching(_url(ctx)):
        migrate.check(_url(ctx), migrations_dir=ctx.obj.migrations_dir)
    console.print("no drift between models and migrations")
