"""`kap dataset query | create | list | show | export | audit`: curation over the trajectory store.

    kap dataset query "SELECT domain, avg(reward) FROM curation.trajectory_summary GROUP BY 1"
    kap dataset create search-correct --sql "SELECT trajectory_id FROM
        curation.trajectory_summary WHERE correct AND n_turns >= 3"
    kap dataset export search-correct --format jsonl train.jsonl
    kap dataset audit search-correct --against eval.jsonl

Queries run as the read-only role `kap_curator`; a refused one exits 1 with the reason on
stderr. Results print as a table, or as JSON with `--json` (stdout carries only the data).
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import sqlalchemy as sa

    from kap.platform.settings import Settings

dataset_app = typer.Typer(
    help="Curate trajectories with SQL into frozen datasets.", no_args_is_help=True
)
console = Console(stderr=True)
# No markup: cells hold user data (JSON, SQL) whose brackets must print as they are.
out = Console(soft_wrap=True, markup=False)
CELL = 80  # characters of one cell in a table (JSON output is never cut)


def _jsonable(value: Any) -> Any:
    """What json.dumps cannot write itself: ids as text, times in ISO 8601, numerics as floats."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)  # UUID, and anything else PostgreSQL hands back


def _dump(data: Any) -> None:
    typer.echo(json.dumps(data, default=_jsonable, ensure_ascii=False, indent=2))


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        text = json.dumps(value, default=_jsonable, ensure_ascii=False)
    elif value is None or isinstance(value, str | bool | int | float):
        text = str(value)
    else:
        text = str(_jsonable(value))
    return text if len(text) <= CELL else text[: CELL - 1] + "…"


def _engines(settings: Settings, *, curator: bool = False) -> sa.Engine:
    from kap.platform.curation.access import curator_engine
    from kap.platform.db.session import make_engine

    if curator:
        return curator_engine(settings)
    return make_engine(settings.resolved_database_url(), pool_size=2, application_name="kap")


@dataset_app.command()
def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="One SELECT statement.")],
    max_rows: Annotated[int, typer.Option(min=1, help="Rows to return at most.")] = 1000,
    timeout: Annotated[float, typer.Option(min=0.1, help="Statement timeout, seconds.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run a curation query as the read-only role and print its rows."""
    from kap.platform.curation.query import run_query

    engine = _engines(ctx.obj, curator=True)
    try:
        result = run_query(engine, sql, max_rows=max_rows, timeout_s=timeout)
    finally:
        engine.dispose()
    if as_json:
        _dump({"columns": result.columns, "rows": result.records(), "truncated": result.truncated})
        return
    table = Table(*result.columns, show_lines=False)
    for row in result.rows:
        table.add_row(*(_cell(v) for v in row))
    out.print(table)
    more = f", truncated at {max_rows} (--max-rows)" if result.truncated else ""
    console.print(f"{len(result.rows)} rows in {result.elapsed_ms:.0f} ms{more}")


@dataset_app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dataset name; each create adds a version.")],
    sql: Annotated[str, typer.Option("--sql", help="A SELECT returning trajectory_id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Freeze the trajectories SQL selects as the next version of NAME."""
    from kap.platform.curation.datasets import create_dataset

    engine, curator = _engines(ctx.obj), _engines(ctx.obj, curator=True)
    try:
        info = create_dataset(engine, curator, name, sql)
    finally:
        engine.dispose()
        curator.dispose()
    if as_json:
        _dump(info.as_dict())
        return
    out.print(f"{info.ref}: {info.row_count} trajectories, content hash {info.content_hash}")


@dataset_app.command("list")
def list_(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Every dataset version with its size and hash."""
    from kap.platform.curation.datasets import list_datasets

    engine = _engines(ctx.obj)
    try:
        infos = list_datasets(engine)
    finally:
        engine.dispose()
    if as_json:
        _dump([info.as_dict() for info in infos])
        return
    table = Table("dataset", "items", "content hash", "frozen at")
    for info in infos:
        when = info.frozen_at.strftime("%Y-%m-%d %H:%M") if info.frozen_at else "not frozen"
        table.add_row(info.ref, str(info.row_count), (info.content_hash or "")[:16], when)
    out.print(table)


@dataset_app.command()
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (newest when no version).")],
    version: Annotated[int | None, typer.Option(help="Version (default: newest).")] = None,
    check: Annotated[
        bool, typer.Option("--verify", help="Re-hash every item against the store.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A dataset's facts, its SQL, its items' domains; `--verify` re-hashes its items."""
    import sqlalchemy as sa

    from kap.platform.curation.datasets import get_dataset, verify

    engine = _engines(ctx.obj)
    try:
        info = get_dataset(engine, name, version)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT t.domain, count(*) FROM dataset_items i "
                    "JOIN trajectories tr ON tr.id = i.trajectory_id "
                    "JOIN tasks t ON t.id = tr.task_id WHERE i.dataset_id = :d "
                    "GROUP BY t.domain ORDER BY t.domain"
                ),
                {"d": info.id},
            )
            domains: dict[str, int] = dict(rows.tuples().all())
        changed = verify(engine, info) if check else None
    finally:
        engine.dispose()
    facts = {**info.as_dict(), "domains": domains}
    if changed is not None:
        facts["verified"] = not changed
        facts["changed_positions"] = changed
    if as_json:
        _dump(facts)
    else:
        for key, value in facts.items():
            out.print(f"{key}: {value}")
    if changed:
        raise typer.Exit(1)


@dataset_app.command()
def export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    path: Annotated[Path, typer.Argument(help="Output file.", dir_okay=False)],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    version: Annotated[int | None, typer.Option(help="Version (default: newest).")] = None,
) -> None:
    """Write a frozen dataset's conversations (messages, tools, domain, ids) to PATH."""
    from kap.platform.curation.datasets import FORMATS, export_dataset
    from kap.platform.errors import CurationError

    if fmt not in FORMATS:
        raise CurationError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    engine = _engines(ctx.obj)
    try:
        info, n = export_dataset(engine, name, version, fmt, path)
    finally:
        engine.dispose()
    console.print(f"{info.ref}: {n} conversations -> {path} (content hash {info.content_hash})")


@dataset_app.command()
def audit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
    against: Annotated[
        Path, typer.Option(help="Evaluation set: JSONL or a JSON list with question/answer.")
    ],
    n: Annotated[int, typer.Option(min=1, help="Word n-gram length.")] = 8,
    threshold: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Share of an eval item's n-grams to flag.")
    ] = 0.5,
    observations: Annotated[
        bool, typer.Option(help="Also search tool observations (retrieved passages).")
    ] = False,
    version: Annotated[int | None, typer.Option(help="Version (default: newest).")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any item is flagged.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Report n-gram overlap between a dataset's conversations and evaluation questions."""
    from kap.platform.curation.audit import audit as run_audit
    from kap.platform.curation.audit import load_eval
    from kap.platform.curation.datasets import dataset_records, get_dataset

    evaluation = load_eval(against)
    engine = _engines(ctx.obj)
    try:
        info = get_dataset(engine, name, version)
        report = run_audit(
            dataset_records(engine, info), evaluation, n=n, threshold=threshold,
            observations=observations,
        )  # fmt: skip
    finally:
        engine.dispose()
    summary = report.as_dict()
    if as_json:
        _dump({"dataset": info.ref, **summary})
    else:
        table = Table("position", "trajectory", "eval item", "overlap", "shared n-gram")
        for hit in report.flagged[:50]:
            table.add_row(str(hit.position), hit.trajectory_id[:8], _cell(hit.eval_id),
                          f"{hit.overlap:.2f}", _cell(hit.example))  # fmt: skip
        if report.flagged:
            out.print(table)
        out.print(
            f"{info.ref}: {summary['flagged_items']} of {report.items} items flagged "
            f"(overlap >= {threshold:g} of an eval item's {n}-grams); "
            f"{summary['eval_items_leaked']} of {report.eval_items} eval items leaked; "
            f"max overlap {report.max_overlap:.2f}"
        )
    if strict and report.flagged:
        raise typer.Exit(1)
