"""`kap graph ...`: commands over the Knowledge-Action Graph in Neo4j."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(help="The Knowledge-Action Graph in Neo4j.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def schema(ctx: typer.Context) -> None:
    """Create the KAG's constraints and indexes (idempotent) and wait until they are online."""
    from neo4j.exceptions import AuthError, ServiceUnavailable

    from kap.graphstore.connection import connect  # lazy: the driver is slow to import
    from kap.graphstore.schema import ensure_schema
    from kap.platform.errors import GraphStoreError

    settings = ctx.obj
    try:
        with connect(settings) as driver:
            driver.verify_connectivity()  # fail fast: no transaction retries against nothing
            names = ensure_schema(driver, database=settings.neo4j_database)
    except (ServiceUnavailable, AuthError) as exc:
        uri = settings.resolved_neo4j_uri()
        raise GraphStoreError(f"cannot reach Neo4j at {uri}: {exc}") from None
    console.print(f"neo4j schema ready: {len(names)} constraints and indexes online")
