"""`kap graph ...`: commands over the Knowledge-Action Graph in Neo4j."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(help="The Knowledge-Action Graph in Neo4j.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def schema(ctx: typer.Context) -> None:
    """Create the KAG's constraints and indexes (idempotent) and wait until they are online."""
    from kap.graphstore.connection import connect  # lazy: the driver is slow to import
    from kap.graphstore.schema import ensure_schema

    settings = ctx.obj
    with connect(settings) as driver:
        names = ensure_schema(driver, database=settings.neo4j_database)
    console.print(f"neo4j schema ready: {len(names)} constraints and indexes online")
