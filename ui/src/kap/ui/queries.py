"""Every SQL and Cypher query the explorer's pages run, as small cached functions.

Rows come back as lists of dicts (what `st.dataframe` and Altair take). Each cached function
takes the store's address (`db`, `graph`) as its first argument so the cache never answers for
another store; the pages pass `stores.db()` / `stores.graph()`. SQL runs through the read-only
curator role, Cypher in read sessions; every user value is a bound parameter, and the few
WHERE clauses that depend on filters are assembled from fixed fragments only.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
import streamlit as st

from kap.ui import stores

Row = dict[str, Any]
OPEN_STATES = ("pending", "running")
FINISHED_ITEMS = ("done", "rejected", "failed", "cancelled")
EXCERPT_CHARS = 300


def rows(query: str, **params: Any) -> list[Row]:
    """Run one SELECT on the read-only engine; rows as dicts."""
    with stores.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]


# ---- overview ----

COUNTS = """
SELECT (SELECT count(*) FROM campaigns) AS campaigns,
       (SELECT count(*) FROM tasks WHERE accepted) AS tasks_accepted,
       (SELECT count(*) FROM tasks WHERE NOT accepted) AS tasks_rejected,
       (SELECT count(*) FROM trajectories) AS trajectories,
       (SELECT count(*) FROM steps) AS steps,
       (SELECT count(*) FROM verdicts) AS verdicts,
       (SELECT count(*) FROM datasets) AS datasets,
       (SELECT count(*) FROM training_runs) AS training_runs
"""

# The latest verdict of each trajectory (a re-verification adds rows; the newest counts).
PASS_RATES = """
WITH latest AS (
  SELECT DISTINCT ON (trajectory_id) trajectory_id, correct, reward
  FROM verdicts ORDER BY trajectory_id, created_at DESC, id DESC
)
SELECT k.domain, count(*) AS judged, avg(l.correct::int)::float AS pass_rate,
       avg(l.reward)::float AS mean_reward
FROM latest l JOIN trajectories t ON t.id = l.trajectory_id JOIN tasks k ON k.id = t.task_id
GROUP BY k.domain ORDER BY k.domain
"""


@st.cache_data(ttl=15, show_spinner=False)
def counts(db: str) -> Row:
    return rows(COUNTS)[0]


@st.cache_data(ttl=15, show_spinner=False)
def pass_rates(db: str) -> list[Row]:
    return rows(PASS_RATES)


@st.cache_data(ttl=60, show_spinner=False)
def graph_counts(graph: str) -> list[Row]:
    """Entities and chunks per domain."""
    entities = stores.read("MATCH (e:Entity) RETURN e.domain AS domain, count(*) AS n")
    chunks = stores.read("MATCH (c:Chunk) RETURN c.domain AS domain, count(*) AS n")
    by_domain: dict[str, Row] = {}
    for kind, found in (("entities", entities), ("chunks", chunks)):
        for r in found:
            row = by_domain.setdefault(r["domain"], {"domain": r["domain"], "entities": 0,
                                                     "chunks": 0})  # fmt: skip
            row[kind] = r["n"]
    return sorted(by_domain.values(), key=lambda r: str(r["domain"]))


# ---- campaigns ----

CAMPAIGNS = """
SELECT c.id::text AS id, c.name, c.status, array_to_string(c.domains, ', ') AS domains,
       count(i.id) AS items,
       count(i.id) FILTER (WHERE i.status IN ('done', 'rejected', 'failed', 'cancelled'))
         AS finished,
       count(i.id) FILTER (WHERE i.status = 'pending') AS pending,
       count(i.id) FILTER (WHERE i.status = 'queued') AS queued,
       count(i.id) FILTER (WHERE i.status = 'done') AS done,
       count(i.id) FILTER (WHERE i.status = 'rejected') AS rejected,
       count(i.id) FILTER (WHERE i.status = 'failed') AS failed,
       count(i.id) FILTER (WHERE i.status = 'cancelled') AS cancelled,
       c.created_at, c.started_at, c.finished_at
FROM campaigns c LEFT JOIN campaign_items i ON i.campaign_id = c.id
WHERE {where}
GROUP BY c.id ORDER BY c.created_at DESC
LIMIT 500
"""

CAMPAIGN = """
SELECT c.id::text AS id, c.name, c.status, c.config, c.domains, c.created_at, c.started_at,
       c.finished_at,
       (SELECT count(*) FROM tasks k WHERE k.campaign_id = c.id AND k.accepted) AS accepted,
       (SELECT count(*) FROM tasks k WHERE k.campaign_id = c.id AND NOT k.accepted) AS rejected,
       (SELECT count(*) FROM trajectories t WHERE t.campaign_id = c.id) AS trajectories
FROM campaigns c WHERE c.id = :c
"""

REJECTIONS = """
SELECT e.key AS criterion, count(*) AS tasks
FROM tasks k CROSS JOIN LATERAL jsonb_each(k.criteria) e
WHERE k.campaign_id = :c AND (e.value ->> 'passed')::boolean IS FALSE
GROUP BY e.key ORDER BY tasks DESC
"""

ITEMS = """
SELECT position, status, attempts, task_id::text AS task_id, error, updated_at
FROM campaign_items WHERE campaign_id = :c ORDER BY position LIMIT 1000
"""


@st.cache_data(ttl=5, show_spinner=False)
def campaigns(db: str, *, open_only: bool = False) -> list[Row]:
    where = "c.status IN ('pending', 'running')" if open_only else "true"
    return rows(CAMPAIGNS.format(where=where))


@st.cache_data(ttl=5, show_spinner=False)
def campaign(db: str, campaign_id: str) -> Row | None:
    found = rows(CAMPAIGN, c=uuid.UUID(campaign_id))
    return found[0] if found else None


@st.cache_data(ttl=5, show_spinner=False)
def campaign_rejections(db: str, campaign_id: str) -> list[Row]:
    return rows(REJECTIONS, c=uuid.UUID(campaign_id))


@st.cache_data(ttl=5, show_spinner=False)
def campaign_items(db: str, campaign_id: str) -> list[Row]:
    return rows(ITEMS, c=uuid.UUID(campaign_id))


# ---- training ----

RUNS = """
SELECT r.id::text AS id, r.name, r.stage, r.status, d.name AS dataset, d.version AS dataset_version,
       r.dataset_hash, r.base_model, r.created_at, r.started_at, r.finished_at,
       (SELECT count(*) FROM run_metrics m WHERE m.run_id = r.id) AS metric_points
FROM training_runs r LEFT JOIN datasets d ON d.id = r.dataset_id
ORDER BY r.created_at DESC LIMIT 500
"""

METRICS = "SELECT name, step, value FROM run_metrics WHERE run_id = :r ORDER BY name, step"


@st.cache_data(ttl=10, show_spinner=False)
def training_runs(db: str) -> list[Row]:
    return rows(RUNS)


@st.cache_data(ttl=10, show_spinner=False)
def run_metrics(db: str, run_id: str) -> list[Row]:
    return rows(METRICS, r=uuid.UUID(run_id))
