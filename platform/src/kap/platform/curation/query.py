"""Run user-written curation SQL safely: one read-only statement, a timeout, a row cap.

    result = run_query(curator_engine, "SELECT domain, count(*) FROM curation.trajectory_summary
                                        GROUP BY domain", max_rows=1000, timeout_s=10)

The engine must log in as the read-only role `kap_curator` (`Settings.resolved_curator_url`):
what the role may not do, PostgreSQL refuses, whatever the text of the query. The layers, from
the outside in:
1. the text must start with SELECT, WITH, VALUES or TABLE (after comments): anything else is
   refused before it is sent, with a message naming the keyword;
2. it runs as the body of a server-side cursor (`DECLARE ... CURSOR FOR`), which PostgreSQL only
   accepts around a single query without data-modifying parts, sent through the extended
   protocol, which refuses several statements in one string;
3. in a READ ONLY transaction, with `statement_timeout` set for it and always rolled back;
4. as a role with SELECT on the curation tables and views only, no CREATE, no TEMP, member of
   no other role (so `SET ROLE` has nothing to switch to).
Rows come from the cursor `max_rows + 1` at most, so a query over millions of rows costs the
client only what it shows; `truncated` says that more were there.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import errors as pg

from kap.platform.errors import CurationError, QueryRefused

__all__ = ["QueryRefused", "QueryResult", "run_query", "statement_of"]

ALLOWED_FIRST = ("SELECT", "WITH", "VALUES", "TABLE")
_COMMENTS = re.compile(r"\s+|--[^\n]*(?:\n|$)|/\*.*?\*/", re.DOTALL)
_FIRST_WORD = re.compile(r"\(*\s*([A-Za-z_]+)")
READABLE_HINT = (
    "the curation role may read the views of schema `curation` (trajectory_summary, steps, "
    "tool_usage, task_criteria) and the tables campaigns, campaign_items, tasks, trajectories, "
    "steps, verdicts, datasets, dataset_items, training_runs, run_metrics, and nothing else"
)


@dataclass(frozen=True)
class QueryResult:
    """What a curation query returned: at most `max_rows` rows, `truncated` if more were there."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_ms: float

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def statement_of(sql: str) -> str:
    """The one statement in `sql`, without trailing semicolons; refuses what is not a query."""
    body = sql.strip().rstrip(";").rstrip()
    start = 0
    while match := _COMMENTS.match(body, start):  # skip leading whitespace and comments
        if match.end() == start:
            break
        start = match.end()
    first = _FIRST_WORD.match(body, start)
    if first is None:
        raise QueryRefused("empty query: write one SELECT statement")
    keyword = first.group(1).upper()
    if keyword not in ALLOWED_FIRST:
        raise QueryRefused(
            f"only a read-only query may run here (SELECT, WITH, VALUES or TABLE), not {keyword}: "
            "curation SQL cannot change the store"
        )
    return body


def run_query(
    engine: sa.Engine, sql: str, *, max_rows: int = 1000, timeout_s: float = 10.0
) -> QueryResult:
    """Run `sql` as the engine's (read-only) role; raise `QueryRefused` saying why it did not."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    statement = statement_of(sql)
    started = time.perf_counter()
    try:
        raw = engine.raw_connection()
    except sa.exc.OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise CurationError(
            f"cannot connect as the read-only role at {where}: {reason} "
            "(`kap db upgrade` creates it and sets its password on the local cluster)"
        ) from None
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        try:
            # A fresh transaction: the pool may hand over a connection with an aborted one.
            conn.rollback()
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [f"{int(timeout_s * 1000)}"]
            )
            with conn.cursor(name="kap_curation") as cursor:
                cursor.execute(statement.encode())  # DECLARE: one query, extended protocol
                rows = cursor.fetchmany(max_rows + 1)
                columns = [column.name for column in cursor.description or []]
        except psycopg.Error as exc:
            raise QueryRefused(_reason(exc, timeout_s)) from None
        finally:
            if not conn.closed:
                conn.rollback()  # never commit anything a curation query did
    finally:
        raw.close()
    return QueryResult(
        columns=columns,
        rows=[tuple(row) for row in rows[:max_rows]],
        truncated=len(rows) > max_rows,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


def _reason(exc: psycopg.Error, timeout_s: float) -> str:
    """One line a person can act on, from PostgreSQL's own message."""
    message = (exc.diag.message_primary or str(exc)).strip().splitlines()[0]
    if isinstance(exc, pg.QueryCanceled):
        return f"the query ran past the statement timeout ({timeout_s:g} s) and was cancelled"
    if isinstance(exc, pg.InsufficientPrivilege):
        return f"refused by PostgreSQL: {message}; {READABLE_HINT}"
    if isinstance(exc, pg.ReadOnlySqlTransaction):
        return f"refused: {message} (curation queries only read)"
    if "multiple commands" in message:
        return "one statement only: this text holds several (remove the `;` between them)"
    if isinstance(exc, pg.SyntaxError | pg.FeatureNotSupported) and "DECLARE" in message:
        return f"only a plain read-only query may run here: {message}"
    if isinstance(exc, pg.OperationalError):
        return f"cannot run the query: {message}"
    return f"PostgreSQL: {message}"
