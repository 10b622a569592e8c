"""The Trajectories page's SQL: the filtered list, one trajectory, its verdicts, a page of steps.

A trajectory may have hundreds of steps and tens of thousands of tokens: the list never reads
`messages` or `steps`, and the timeline reads one page of steps at a time (`steps_page`), so
opening a long trajectory costs the same as a short one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import streamlit as st

from kap.graphstore import provenance
from kap.ui.queries import Row, rows

PAGE_SIZE = 25
LONG_OBSERVATION = 400  # characters: longer observations are folded


@dataclass(frozen=True)
class Filters:
    """What the Trajectories page filters on; None / 0 / "" means no filter."""

    campaign_id: str | None = None
    domain: str | None = None
    correct: bool | None = None
    status: str | None = None
    min_turns: int = 0
    text: str = ""
    limit: int = 200


LIST = """
SELECT t.id::text AS trajectory_id, c.name AS campaign, k.domain, k.question, t.final_answer,
       k.gold_answer, t.status, t.n_turns, t.n_tokens, v.correct, v.reward, t.model,
       t.sample_index, t.created_at
FROM trajectories t
JOIN tasks k ON k.id = t.task_id
JOIN campaigns c ON c.id = t.campaign_id
LEFT JOIN LATERAL (
  SELECT correct, reward FROM verdicts WHERE trajectory_id = t.id
  ORDER BY created_at DESC, id DESC LIMIT 1
) v ON true
WHERE {where}
ORDER BY t.created_at DESC, t.id
LIMIT :limit
"""


def _like(text: str) -> str:
    """An ILIKE pattern matching `text` literally anywhere."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(f: Filters) -> tuple[str, dict[str, Any]]:
    """The WHERE clause from fixed fragments, and its bound parameters."""
    clauses: list[str] = ["true"]
    params: dict[str, Any] = {"limit": f.limit}
    if f.campaign_id:
        clauses.append("t.campaign_id = :campaign")
        params["campaign"] = uuid.UUID(f.campaign_id)
    if f.domain:
        clauses.append("k.domain = :domain")
        params["domain"] = f.domain
    if f.correct is not None:
        clauses.append("v.correct = :correct")
        params["correct"] = f.correct
    if f.status:
        clauses.append("t.status = :status")
        params["status"] = f.status
    if f.min_turns:
        clauses.append("t.n_turns >= :min_turns")
        params["min_turns"] = f.min_turns
    if f.text.strip():
        clauses.append("k.question ILIKE :text")
        params["text"] = _like(f.text.strip())
    return " AND ".join(clauses), params


@st.cache_data(ttl=10, show_spinner=False)
def trajectories(db: str, filters: Filters) -> list[Row]:
    where, params = _where(filters)
    return rows(LIST.format(where=where), **params)


@st.cache_data(ttl=30, show_spinner=False)
def options(db: str) -> Row:
    """Choices for the filters: campaigns (id, name), domains, statuses."""
    return {
        "campaigns": rows("SELECT id::text AS id, name, created_at FROM campaigns "
                          "ORDER BY created_at DESC LIMIT 500"),
        "domains": [r["domain"] for r in rows("SELECT DISTINCT domain FROM tasks ORDER BY 1")],
        "statuses": [r["status"] for r in rows(
            "SELECT DISTINCT status FROM trajectories ORDER BY 1")],
    }  # fmt: skip


ONE = """
SELECT t.id::text AS trajectory_id, t.campaign_id::text AS campaign_id, c.name AS campaign,
       t.task_id::text AS task_id, k.domain, k.kind, k.question, k.gold_answer, k.aliases,
       k.evidence, k.hops, k.region, t.final_answer, t.status, t.model, t.sample_index,
       t.n_turns, t.n_tokens, t.meta, t.created_at, t.started_at, t.finished_at,
       (SELECT count(*) FROM steps s WHERE s.trajectory_id = t.id) AS n_steps,
       (SELECT coalesce(sum(s.tokens), 0) FROM steps s WHERE s.trajectory_id = t.id)
         AS step_tokens
FROM trajectories t JOIN tasks k ON k.id = t.task_id JOIN campaigns c ON c.id = t.campaign_id
WHERE t.id = :id
"""

VERDICTS = """
SELECT verifier, verifier_version, correct, reward, components, details, created_at
FROM verdicts WHERE trajectory_id = :id ORDER BY created_at DESC, id DESC
"""

STEPS = """
SELECT t, role, content, tool, args, observation, tokens, latency_ms, checks
FROM steps WHERE trajectory_id = :id AND t >= :lo AND t < :hi ORDER BY t
"""


def parse_id(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text)) if text else None
    except ValueError:
        return None


@st.cache_data(ttl=60, show_spinner=False)
def trajectory(db: str, trajectory_id: str) -> Row | None:
    tid = parse_id(trajectory_id)
    found = rows(ONE, id=tid) if tid else []
    return found[0] if found else None


@st.cache_data(ttl=60, show_spinner=False)
def verdicts(db: str, trajectory_id: str) -> list[Row]:
    return rows(VERDICTS, id=uuid.UUID(trajectory_id))


@st.cache_data(ttl=300, show_spinner=False)
def steps_page(db: str, trajectory_id: str, page: int, size: int = PAGE_SIZE) -> list[Row]:
    """Steps `page * size` .. `(page + 1) * size - 1` of a trajectory (a stored trajectory's
    steps never change)."""
    lo = page * size
    return rows(STEPS, id=uuid.UUID(trajectory_id), lo=lo, hi=lo + size)


def pages(n_steps: int, size: int = PAGE_SIZE) -> int:
    return max(1, -(-n_steps // size))


def read_chunk_ids(step: Row) -> list[str]:
    """Chunks a step read in full (its observations' `read_chunk_ids`), in order, once."""
    return provenance.read_chunk_ids(step.get("checks"))
