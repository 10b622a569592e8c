"""Provenance: from a dataset item to its trajectory, its steps, the chunks they read, the graph.

    found = trace(engine, driver, "search-correct@2#17")   # or a trajectory id
    found.steps[3]["chunk_ids"], found.chunks[0]["document"], found.entities[0]["name"]

The PostgreSQL half reads the trajectory, its task, its newest verdict and its steps (works with
the read-only role); each step's chunk ids are what its observations record as read
(`checks.observations[i].read_chunk_ids`), in turn order. The Neo4j half reads those chunks with
their document, the entities they mention and the facts they are evidence for, and the task's
own evidence chunks (what the proposer built the question from), so a reader sees both what
the agent read and what it should have read.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import neo4j
import sqlalchemy as sa

from kap.platform.errors import CurationError

ITEM_REF = re.compile(r"^(?P<name>[^@#]+)@(?P<version>\d+)#(?P<position>\d+)$")
TRAJECTORY_FIELDS = ("id", "status", "model", "n_turns", "n_tokens", "final_answer",
                     "sample_index", "campaign_id", "meta")  # fmt: skip
TASK_FIELDS = ("task_id", "domain", "kind", "question", "gold_answer", "evidence", "hops", "region")
EXCERPT = 300  # characters of a chunk's text in a trace

CHUNKS = """
UNWIND $ids AS cid
MATCH (c:Chunk {id: cid})
OPTIONAL MATCH (c)-[:PART_OF]->(d:Document)
OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity)
WITH c, d, collect(DISTINCT e) AS named
OPTIONAL MATCH (d)-[:ABOUT]->(about:Entity)
WITH c, d, named, collect(DISTINCT about) + named AS ends
// facts whose evidence is this chunk, among the entities it names or is about (no REL scan)
CALL (c, ends) {
    UNWIND ends AS x
    MATCH (x)-[r:REL]-()
    WHERE c.id IN r.evidence
    WITH DISTINCT r
    RETURN collect({id: r.id, predicate: r.predicate, source: startNode(r).name,
                    target: endNode(r).name})[..20] AS facts
}
OPTIONAL MATCH (ar:ActionRecord)-[:READ]->(c)
RETURN c.id AS id, c.domain AS domain, d.id AS document_id, d.title AS document,
       left(c.text, $excerpt) AS text, c.coverage AS coverage,
       [e IN named | {id: e.id, name: e.name}] AS mentions,
       facts, count(DISTINCT ar) AS read_by
"""


@dataclass
class Trace:
    """A trajectory with the evidence behind it, as `kap trace` and the explorer show it."""

    ref: str
    trajectory: dict[str, Any]
    task: dict[str, Any]
    verdict: dict[str, Any] | None
    steps: list[dict[str, Any]]
    chunks: list[dict[str, Any]] = field(default_factory=list)  # read by the agent, in order
    task_chunks: list[dict[str, Any]] = field(default_factory=list)  # the task's gold evidence
    entities: list[dict[str, Any]] = field(default_factory=list)  # mentioned by chunks read
    dataset_item: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _trajectory_id(conn: sa.Connection, ref: str) -> tuple[uuid.UUID, dict[str, Any] | None]:
    match = ITEM_REF.match(ref.strip())
    if match is None:
        try:
            return uuid.UUID(ref.strip()), None
        except ValueError:
            raise CurationError(
                f"{ref!r}: give a trajectory id or a dataset item NAME@VERSION#POSITION"
            ) from None
    row = (
        conn.execute(
            sa.text(
                "SELECT i.trajectory_id, i.position, i.item_hash, d.name, d.version, "
                "d.content_hash FROM dataset_items i JOIN datasets d ON d.id = i.dataset_id "
                "WHERE d.name = :name AND d.version = :version AND i.position = :position"
            ),
            {
                k: match[k] if k == "name" else int(match[k])
                for k in ("name", "version", "position")
            },
        )
        .mappings()
        .first()
    )
    if row is None:
        raise CurationError(f"no dataset item {ref} (positions count from 0)")
    return row["trajectory_id"], dict(row)


def read_chunk_ids(checks: dict[str, Any] | None) -> list[str]:
    """Chunks a step read in full (its observations' `read_chunk_ids`), in order, once each."""
    found = (
        c
        for obs in (checks or {}).get("observations") or []
        for c in obs.get("read_chunk_ids") or ()
    )
    return list(dict.fromkeys(str(c) for c in found))


def trace(
    engine: sa.Engine, driver: neo4j.Driver | None, ref: str, *, database: str = "neo4j"
) -> Trace:
    """Follow `ref` (a trajectory id or NAME@V#POS) to its steps, chunks and graph nodes."""
    with engine.connect() as conn:
        trajectory_id, item = _trajectory_id(conn, ref)
        row = (
            conn.execute(
                sa.text(
                    "SELECT tr.id, tr.status, tr.model, tr.n_turns, tr.n_tokens, tr.final_answer, "
                    "tr.sample_index, tr.campaign_id, tr.meta, t.id AS task_id, t.domain, t.kind, "
                    "t.question, t.gold_answer, t.evidence, t.hops, t.region "
                    "FROM trajectories tr JOIN tasks t ON t.id = tr.task_id WHERE tr.id = :id"
                ),
                {"id": trajectory_id},
            )
            .mappings()
            .first()
        )
        if row is None:
            raise CurationError(f"no trajectory {trajectory_id}")
        verdict = (
            conn.execute(
                sa.text(
                    "SELECT verifier, verifier_version, correct, reward, components, details "
                    "FROM verdicts WHERE trajectory_id = :id ORDER BY created_at DESC, id DESC "
                    "LIMIT 1"
                ),
                {"id": trajectory_id},
            )
            .mappings()
            .first()
        )
        steps = [
            {**dict(s), "chunk_ids": read_chunk_ids(s["checks"])}
            for s in conn.execute(
                sa.text(
                    "SELECT t, role, content, tool, args, observation, tokens, latency_ms, checks "
                    "FROM steps WHERE trajectory_id = :id ORDER BY t"
                ),
                {"id": trajectory_id},
            ).mappings()
        ]
    trajectory = {k: row[k] for k in TRAJECTORY_FIELDS}
    task = {k: row[k] for k in TASK_FIELDS}
    found = Trace(ref, trajectory, task, dict(verdict) if verdict else None, steps,
                  dataset_item=item)  # fmt: skip
    if driver is None:
        return found
    read = list(dict.fromkeys(c for s in steps for c in s["chunk_ids"]))
    read += [c for c in (trajectory["meta"] or {}).get("read_chunk_ids", []) if c not in read]
    gold = list(dict.fromkeys(str(c) for hop in task["evidence"] or [] for c in hop))
    chunks = _chunks(driver, list(dict.fromkeys(read + gold)), database)
    found.chunks = [chunks[c] for c in read if c in chunks]
    found.task_chunks = [chunks[c] for c in gold if c in chunks]
    entities: dict[str, dict[str, Any]] = {}
    for chunk in found.chunks:
        for mention in chunk["mentions"]:
            if mention["id"] is not None:
                entities.setdefault(mention["id"], {**mention, "via": []})["via"].append(
                    chunk["id"]
                )
    found.entities = list(entities.values())
    return found


def _chunks(driver: neo4j.Driver, ids: list[str], database: str) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    records = driver.execute_query(
        CHUNKS, ids=ids, excerpt=EXCERPT, database_=database, routing_=neo4j.RoutingControl.READ
    ).records
    return {r["id"]: r.data() for r in records}
