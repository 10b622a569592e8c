"""`kap services up | down | status [--json]`: the local Neo4j, PostgreSQL and Redis."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from kap.platform.services.manager import ServiceManager


services_app = typer.Typer(help="Start, stop and inspect the local services.", no_args_is_help=True)
console = Console(stderr=True)

Only = Annotated[
    list[str] | None,
    typer.Option("--only", help="Limit to these services (postgres, redis, neo4j)."),
]


def _manager(ctx: typer.Context) -> ServiceManager:
    from kap.platform.services.manager import ServiceManager  # lazy: drivers import slowly

    return ServiceManager(ctx.obj, report=lambda line: console.print(f"  {line}", highlight=False))


@services_app.command()
def up(ctx: typer.Context, only: Only = None) -> None:
    """Start the local services (idempotent) and wait until each is healthy."""
    console.print(f"[bold]kap services up[/] (state in {ctx.obj.state_dir})")
    _manager(ctx).up(only)


@services_app.command()
def down(ctx: typer.Context, only: Only = None) -> None:
    """Stop the local services (idempotent); existing servers are left alone."""
    console.print("[bold]kap services down[/]")
    _manager(ctx).down(only)


@services_app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print connection facts as JSON.")
    ] = False,
) -> None:
    """Show whether each service is up, and how to connect to it."""
    facts = _manager(ctx).facts()
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    table = Table("service", "up", "where", "pid", "log")
    for name, st in facts["services"].items():
        where = f"127.0.0.1:{st['port']}" if st["local"] else "existing server"
        mark = "[green]up[/]" if st["up"] else "[red]down[/]"
        table.add_row(name, mark, where, str(st["pid"] or "-"), st["log"] or "-")
    Console().print(table)
    for key in ("neo4j_uri", "database_url", "broker_url"):
        typer.echo(f"{key}: {facts[key] or '(not set up yet)'}")


@services_app.command()
def check(ctx: typer.Context) -> None:
    """Run `RETURN 1` in Neo4j, `SELECT 1` in PostgreSQL and `PING` in Redis."""
    from kap.platform.services.manager import probe

    typer.echo(json.dumps(probe(ctx.obj), indent=2))
