"""`kap graph ...`: commands over the Knowledge-Action Graph in Neo4j."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from kap.platform.errors import GraphStoreError

if TYPE_CHECKING:
    import neo4j

    from kap.graphstore.extract import LLMExtractor
    from kap.platform.settings import Settings

app = typer.Typer(help="The Knowledge-Action Graph in Neo4j.", no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def schema(ctx: typer.Context) -> None:
    """Create the KAG's constraints and indexes (idempotent) and wait until they are online."""
    from kap.graphstore.schema import ensure_schema  # lazy: the driver is slow to import

    settings = ctx.obj
    with _driver(settings) as driver:
        names = ensure_schema(driver, database=settings.neo4j_database)
    console.print(f"neo4j schema ready: {len(names)} constraints and indexes online")


def _driver(settings: Settings) -> neo4j.Driver:
    from neo4j.exceptions import AuthError, ServiceUnavailable

    from kap.graphstore.connection import connect

    driver = connect(settings)
    try:
        driver.verify_connectivity()
    except (ServiceUnavailable, AuthError) as exc:
        driver.close()
        uri = settings.resolved_neo4j_uri()
        raise GraphStoreError(f"cannot reach Neo4j at {uri}: {exc}") from None
    return driver


@app.command()
def stats(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count nodes per label and relationships per type."""
    from kap.graphstore.stats import graph_stats

    settings = ctx.obj
    with _driver(settings) as driver:
        facts = graph_stats(driver, domain=domain, database=settings.neo4j_database)
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    table = Table("kind", "name", "count", title=f"graph ({domain or 'all domains'})")
    for label, n in facts["nodes"].items():
        table.add_row("node", label, f"{n:,}")
    for rel, n in sorted(facts["relationships"].items()):
        table.add_row("relationship", rel, f"{n:,}")
    Console().print(table)


def ingest(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A file or a folder of wiki pages.")],
    domain: Annotated[str, typer.Option(help="The KAG domain to ingest into.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="Loader; detected when omitted.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per transaction.")] = 200,
    extract: Annotated[
        bool, typer.Option(help="LLM fact extraction, when KAP_EXTRACTOR_URL is configured.")
    ] = True,
    index: Annotated[
        bool, typer.Option(help="Embed the new chunks into the domain's index, if it has one.")
    ] = True,
) -> None:
    """Ingest a corpus file into the Knowledge-Action Graph (idempotent)."""
    from rich.progress import Progress

    from kap.graphstore.indexing import saved_index_dir
    from kap.graphstore.ingest import Ingestor
    from kap.graphstore.loaders import load_file
    from kap.graphstore.schema import ensure_schema

    settings = ctx.obj
    result = load_file(path, format=fmt)  # the whole file parses before any write
    extractor = _extractor(settings) if extract and settings.extractor_configured else None
    with _driver(settings) as driver:
        ensure_schema(driver, database=settings.neo4j_database)
        ingestor = Ingestor(driver, domain, database=settings.neo4j_database,
                            batch_size=batch_size, extractor=extractor)  # fmt: skip
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"ingesting {path.name}", total=len(result))
            counts = ingestor.run(result, progress=lambda n: bar.advance(task, n))
        console.print(f"ingested {path} into domain {domain!r}: {counts}")
        if not index:
            pass
        elif saved_index_dir(settings.state_dir, domain) is not None:
            _refresh_index(settings, driver, domain, rebuild=False)
        else:
            console.print(f"no evidence index yet: `kap index build --domain {domain}`")
    if extractor is not None:
        calls, failures = extractor.calls, extractor.failures
        console.print(f"fact extraction: {calls} model calls, {failures} unusable replies")


def _extractor(settings: Settings) -> LLMExtractor:
    from kap.graphstore.extract import LLMExtractor
    from kap.platform.llm import ChatClient, EndpointConfig

    assert settings.extractor_url and settings.extractor_model
    config = EndpointConfig(settings.extractor_url, settings.extractor_model,
                            api_key=settings.extractor_api_key)  # fmt: skip
    return LLMExtractor(ChatClient(config), settings.cache_dir / "extract")


@app.command()
def sample(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option(help="Domain to sample from.")],
    hops: Annotated[int, typer.Option(min=1, max=6, help="Relation hops per chain.")] = 2,
    n: Annotated[int, typer.Option(min=1, help="How many chains.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    prefer_unexplored: Annotated[
        bool, typer.Option(help="Weight starts toward entities earlier campaigns touched least.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sample k-hop relation chains, each hop with its evidence chunk ids."""
    from dataclasses import asdict

    from kap.graphstore.sampling import count_satisfying, sample_chains

    settings = ctx.obj
    with _driver(settings) as driver:
        chains = sample_chains(driver, domain, hops, n=n, seed=seed,
                               prefer_unexplored=prefer_unexplored,
                               database=settings.neo4j_database)  # fmt: skip
        out = [
            {**asdict(c), "answers": count_satisfying(driver, c.start, c.predicates,
                                                     database=settings.neo4j_database)}
            for c in chains
        ]  # fmt: skip
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for chain in out:
        path = chain["hops"][0]["subject_name"]
        for hop in chain["hops"]:
            path += f" -[{hop['predicate']}]-> {hop['object_name']}"
        n = chain["answers"]
        typer.echo(f"{path}   ({n} {'entity satisfies' if n == 1 else 'entities satisfy'} it)")


@app.command()
def neighbors(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Entity name or alias (full-text matched).")],
    hops: Annotated[int, typer.Option(min=1, max=6, help="Relation hops.")] = 1,
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show an entity's k-hop neighbourhood of facts."""
    from kap.graphstore.sampling import find_entity, neighbourhood

    settings = ctx.obj
    with _driver(settings) as driver:
        entity = find_entity(driver, name, domain=domain, database=settings.neo4j_database)
        region = neighbourhood(driver, entity["id"], hops, database=settings.neo4j_database)
    if as_json:
        typer.echo(json.dumps({"entity": entity, **region}, indent=2))
        return
    names = {n["id"]: n["name"] for n in region["nodes"]}
    typer.echo(f"{entity['name']} ({entity['domain']}): {len(region['nodes'])} entities")
    for rel in region["relations"]:
        typer.echo(f"  {names[rel['source']]} -[{rel['predicate']}]-> {names[rel['target']]}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    document_id: Annotated[str, typer.Argument(help="The Document id (doc:...).")],
    domain: Annotated[str, typer.Option(help="The document's domain.")],
) -> None:
    """Delete a document: its chunks, mentions, facts it alone supported, and its vectors."""
    from kap.graphstore.evidence import EvidenceIndex
    from kap.graphstore.indexing import saved_index_dir
    from kap.graphstore.ingest import delete_document

    settings = ctx.obj
    with _driver(settings) as driver:
        chunk_ids = delete_document(driver, document_id, domain=domain,
                                    database=settings.neo4j_database)  # fmt: skip
    directory = saved_index_dir(settings.state_dir, domain)
    removed = 0
    if directory is not None:
        index = EvidenceIndex.load(directory)
        removed = index.remove(chunk_ids, missing_ok=True)
        index.save(directory)
    console.print(f"deleted {document_id}: {len(chunk_ids)} chunks, {removed} vectors")


index_app = typer.Typer(help="The per-domain FAISS evidence index.", no_args_is_help=True)
evidence_app = typer.Typer(help="Search the evidence index.", no_args_is_help=True)


@index_app.command("build")
def index_build(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option(help="Domain to index.")],
    rebuild: Annotated[
        bool, typer.Option(help="Re-embed every chunk instead of only the new ones.")
    ] = False,
) -> None:
    """Embed the domain's chunks into its evidence index (only new ones, unless --rebuild)."""
    settings = ctx.obj
    with _driver(settings) as driver:
        _refresh_index(settings, driver, domain, rebuild=rebuild)


def _refresh_index(settings: Settings, driver: neo4j.Driver, domain: str, *, rebuild: bool) -> None:
    from kap.graphstore.embed import Embedder
    from kap.graphstore.evidence import EvidenceIndex
    from kap.graphstore.indexing import build_index, index_dir, saved_index_dir, update_index

    embedder, directory = Embedder(), index_dir(settings.state_dir, domain)
    saved = None if rebuild else saved_index_dir(settings.state_dir, domain)
    if saved is None:
        index = build_index(driver, domain, embedder, database=settings.neo4j_database)
        what = f"embedded {len(index)} chunks"
    else:
        update = update_index(driver, domain, embedder, EvidenceIndex.load(saved),
                              database=settings.neo4j_database)  # fmt: skip
        index = update.index
        what = f"embedded {update.added} new chunks, dropped {update.removed}"
        what += " (re-laid out)" if update.rebuilt else ""
    index.save(directory)
    console.print(f"evidence index of {domain!r}: {what}; {len(index)} chunks ({index.kind}) "
                  f"in {directory}")  # fmt: skip


@index_app.command("verify")
def index_verify(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option(help="Domain to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the saved index against Neo4j and the embedding model; exit 1 on any mismatch."""
    from kap.graphstore.embed import Embedder
    from kap.graphstore.indexing import require_index_dir, verify_index

    settings = ctx.obj
    directory = require_index_dir(settings.state_dir, domain)
    with _driver(settings) as driver:
        report = verify_index(driver, domain, directory, Embedder(),
                              database=settings.neo4j_database)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        state = "ok" if report["ok"] else "MISMATCH"
        console.print(f"{state}: {report['indexed']} indexed, {report['chunks']} chunks in Neo4j, "
                      f"{report['n_missing']} missing, {report['n_extra']} extra")  # fmt: skip
    if not report["ok"]:
        raise typer.Exit(1)


@evidence_app.command("search")
def evidence_search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="What to look for.")],
    domain: Annotated[str, typer.Option(help="Domain to search.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many chunks.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The chunks closest to TEXT, best first."""
    from kap.graphstore.embed import Embedder
    from kap.graphstore.indexing import load_domain_index, require_index_dir, search_evidence

    settings = ctx.obj
    require_index_dir(settings.state_dir, domain)  # before the model loads
    embedder = Embedder()
    index = load_domain_index(settings.state_dir, domain, embedder)
    with _driver(settings) as driver:
        hits = search_evidence(driver, index, embedder, text, k, database=settings.neo4j_database)
    if as_json:
        typer.echo(json.dumps(hits, indent=2))
        return
    for hit in hits:
        typer.echo(f"{hit['score']:.3f}  {hit['title']}  {hit['chunk_id']}")
