"""Action records: a verified trajectory written back into the Knowledge-Action Graph.

    counts = record_actions(driver, "musique", trajectory_id=str(tid), result=result,
                            verdict=verdict, verifier="search-v1",
                            evidence_entity_ids=[start_id, answer_id])

What one trajectory leaves in Neo4j (domain `d`):
- `(:ActionRecord {id: "<trajectory id>/<t>", trajectory_id, t, domain, tools, is_error})`
  per step, and `(:ActionRecord)-[:NEXT]->(:ActionRecord)` from each turn to the next;
- `-[:USED {calls}]->(:Tool {id: "d/<name>"})` per tool the step called (`calls`: how many
  times). The built-in tools (search, visit, graph, python, answer) are MERGEd, created as
  `{id, domain, name, builtin: true}` when ingestion has not written them; any other name
  links only to a Tool the domain already has (a made-up name creates nothing);
- `-[:READ]->(:Chunk)` for every chunk of the domain the step read in full (a `visit`);
- `-[:OBSERVED {call}]->(:Observation {id, domain, text, chars, is_error})` per tool call:
  the id hashes (domain, is_error, full text), so identical observations share a node; `text`
  keeps the first `OBSERVATION_CHARS` characters and `chars` the full length;
- `-[:CHECKED_BY {outcome, reward}]->(:Verifier {id: "d/<verifier>", domain, name})` on the
  LAST record only (the verdict judges the whole trajectory, whose last turn gave the
  answer); `outcome` is "correct" or "incorrect". Another verifier judging the same
  trajectory later adds its own edge (MERGE per verifier).

Coverage: `coverage` on each chunk the trajectory read and on each entity in
`evidence_entity_ids` (the region and the answer; `kap.graphstore.sampling` weighs a chain's
start by 1 / (1 + Entity.coverage)) rises by exactly one per trajectory. Everything is one
managed write transaction (`session.execute_write`, retried as a whole on transient errors);
the first record is MERGEd first with a token unique to the attempt, and the counters rise
only when that token shows this attempt created it. A redelivered call (or two racing ones, which
serialize on the uniqueness constraint) re-MERGEs the same graph and raises nothing twice.
A trajectory without steps explored nothing and leaves nothing.

Neo4j unreachable after the driver's own retries: `TransientStoreError`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import neo4j
from neo4j.exceptions import ServiceUnavailable, SessionExpired, TransientError

from kap.platform.errors import TransientStoreError
from kap.workers.solver import SolveResult, StepRecord
from kap.workers.tools import SCHEMAS
from kap.workers.verifier import Verdict

BUILTIN_TOOLS = frozenset(s["function"]["name"] for s in SCHEMAS)
OBSERVATION_CHARS = 1000

# ---- Cypher, always with $parameters ----

MERGE_FIRST_RECORD = """
MERGE (a:ActionRecord {id: $id})
ON CREATE SET a.recorded_by = $token
RETURN a.recorded_by = $token AS created
"""

MERGE_RECORDS = """
UNWIND $rows AS row
MERGE (a:ActionRecord {id: row.id})
ON CREATE SET a.recorded_by = $token
SET a.trajectory_id = row.trajectory_id, a.t = row.t, a.domain = $domain, a.tools = row.tools,
    a.is_error = row.is_error
"""

MERGE_NEXT_RECORDS = """
UNWIND $rows AS row
MATCH (a:ActionRecord {id: row.prev}), (b:ActionRecord {id: row.next})
MERGE (a)-[:NEXT]->(b)
"""

MERGE_USED_BUILTIN = """
UNWIND $rows AS row
MATCH (a:ActionRecord {id: row.record})
MERGE (t:Tool {id: row.tool_id})
ON CREATE SET t.domain = $domain, t.name = row.name, t.builtin = true
MERGE (a)-[u:USED]->(t)
SET u.calls = row.calls
"""

MERGE_USED_DOMAIN = """
UNWIND $rows AS row
MATCH (a:ActionRecord {id: row.record}), (t:Tool {id: row.tool_id})
MERGE (a)-[u:USED]->(t)
SET u.calls = row.calls
"""

MERGE_READ = """
UNWIND $rows AS row
MATCH (a:ActionRecord {id: row.record})
MATCH (c:Chunk {id: row.chunk_id}) WHERE c.domain = $domain
MERGE (a)-[:READ]->(c)
"""

MERGE_OBSERVED = """
UNWIND $rows AS row
MATCH (a:ActionRecord {id: row.record})
MERGE (o:Observation {id: row.id})
ON CREATE SET o.domain = $domain, o.text = row.text, o.chars = row.chars,
              o.is_error = row.is_error
MERGE (a)-[:OBSERVED {call: row.call}]->(o)
"""

MERGE_CHECKED_BY = """
MATCH (a:ActionRecord {id: $record})
MERGE (v:Verifier {id: $verifier_id})
ON CREATE SET v.domain = $domain, v.name = $verifier
MERGE (a)-[c:CHECKED_BY]->(v)
SET c.outcome = $outcome, c.reward = $reward
"""

COVER_CHUNKS = """
UNWIND $ids AS id
MATCH (c:Chunk {id: id}) WHERE c.domain = $domain
SET c.coverage = coalesce(c.coverage, 0) + 1
RETURN count(c) AS n
"""

COVER_ENTITIES = """
UNWIND $ids AS id
MATCH (e:Entity {id: id}) WHERE e.domain = $domain
SET e.coverage = coalesce(e.coverage, 0) + 1
RETURN count(e) AS n
"""

Row = dict[str, Any]


# ---- rows ----


def record_id(trajectory_id: str, t: int) -> str:
    return f"{trajectory_id}/{t}"


def observation_id(domain: str, text: str, *, is_error: bool) -> str:
    digest = hashlib.sha256(f"{domain}\x00{int(is_error)}\x00{text}".encode(errors="replace"))
    return digest.hexdigest()[:32]


def _call_name(call: dict[str, Any]) -> str | None:
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


def _step_rows(domain: str, trajectory_id: str, step: StepRecord) -> dict[str, list[Row]]:
    """The rows of one step for each statement."""
    rid = record_id(trajectory_id, step.t)
    names = [n for n in (_call_name(c) for c in step.tool_calls) if n is not None]
    rows: dict[str, list[Row]] = {"builtin": [], "domain": [], "read": [], "observed": []}
    for name, calls in Counter(names).items():
        kind = "builtin" if name in BUILTIN_TOOLS else "domain"
        rows[kind].append({"record": rid, "tool_id": f"{domain}/{name}", "name": name,
                           "calls": calls})  # fmt: skip
    read = dict.fromkeys(c for obs in step.observations for c in obs.get("read_chunk_ids", ()))
    rows["read"] = [{"record": rid, "chunk_id": c} for c in read]
    for i, obs in enumerate(step.observations):
        text, is_error = str(obs.get("content") or ""), bool(obs.get("is_error"))
        oid = observation_id(domain, text, is_error=is_error)
        head = text[:OBSERVATION_CHARS]
        rows["observed"].append({"record": rid, "call": i, "id": oid, "chars": len(text),
                                 "text": head, "is_error": is_error})  # fmt: skip
    rows["records"] = [{"id": rid, "trajectory_id": trajectory_id, "t": step.t, "tools": names,
                        "is_error": bool(step.checks.get("error"))}]  # fmt: skip
    return rows


def action_rows(domain: str, trajectory_id: str, result: SolveResult) -> dict[str, list[Row]]:
    """Rows for every statement, over all steps of the trajectory."""
    out: dict[str, list[Row]] = {"records": [], "builtin": [], "domain": [], "read": [],
                                 "observed": []}  # fmt: skip
    for step in result.steps:
        for kind, rows in _step_rows(domain, trajectory_id, step).items():
            out[kind] += rows
    ids = [r["id"] for r in out["records"]]
    out["next"] = [{"prev": a, "next": b} for a, b in pairwise(ids)]
    return out


# ---- the transaction ----


def _write(
    tx: neo4j.ManagedTransaction,
    domain: str,
    rows: dict[str, list[Row]],
    checked: Row,
    cover: dict[str, list[str]],
) -> dict[str, int]:
    """Write everything idempotently; raise coverage only if this attempt created the records.

    The token is new per attempt: should the driver retry after a commit whose reply was lost,
    the retry finds the first record with the earlier attempt's token and raises nothing."""
    token = uuid.uuid4().hex
    first = rows["records"][0]["id"]
    created = tx.run(MERGE_FIRST_RECORD, id=first, token=token).single(strict=True)["created"]
    counters = [
        tx.run(MERGE_RECORDS, rows=rows["records"], token=token, domain=domain).consume(),
        tx.run(MERGE_NEXT_RECORDS, rows=rows["next"]).consume(),
        tx.run(MERGE_USED_BUILTIN, rows=rows["builtin"], domain=domain).consume(),
        tx.run(MERGE_USED_DOMAIN, rows=rows["domain"]).consume(),
        tx.run(MERGE_READ, rows=rows["read"], domain=domain).consume(),
        tx.run(MERGE_OBSERVED, rows=rows["observed"], domain=domain).consume(),
        tx.run(MERGE_CHECKED_BY, checked, domain=domain).consume(),
    ]
    counts = {
        "records": len(rows["records"]),
        "recorded": int(bool(created)),
        "nodes_created": 1 if created else 0,  # the first record, MERGEd above
        "relationships_created": 0,
        "chunk_coverage": 0,
        "entity_coverage": 0,
    }
    for summary in counters:
        counts["nodes_created"] += summary.counters.nodes_created
        counts["relationships_created"] += summary.counters.relationships_created
    if created:
        for key, query in (("chunk_coverage", COVER_CHUNKS), ("entity_coverage", COVER_ENTITIES)):
            record = tx.run(query, ids=cover[key], domain=domain).single(strict=True)
            counts[key] = int(record["n"])
    return counts


def record_actions(
    driver: neo4j.Driver,
    domain: str,
    *,
    trajectory_id: str,
    result: SolveResult,
    verdict: Verdict,
    verifier: str,
    evidence_entity_ids: Sequence[str] = (),
    database: str = "neo4j",
) -> dict[str, int]:
    """Write a verified trajectory's action records and raise coverage once; return counts:
    `records` (steps), `recorded` (1 when this call was the first for the trajectory),
    `nodes_created`, `relationships_created`, and `chunk_coverage` / `entity_coverage` (how
    many chunks and entities this call raised; 0 on a repeat)."""
    if not result.steps:
        return {"records": 0, "recorded": 0, "nodes_created": 0, "relationships_created": 0,
                "chunk_coverage": 0, "entity_coverage": 0}  # fmt: skip
    rows = action_rows(domain, trajectory_id, result)
    checked = {
        "record": rows["records"][-1]["id"],
        "verifier_id": f"{domain}/{verifier}",
        "verifier": verifier,
        "outcome": "correct" if verdict.correct else "incorrect",
        "reward": float(verdict.reward),
    }
    cover = {"chunk_coverage": list(dict.fromkeys(result.read_chunk_ids)),
             "entity_coverage": list(dict.fromkeys(evidence_entity_ids))}  # fmt: skip
    try:
        with driver.session(database=database) as session:
            return session.execute_write(_write, domain, rows, checked, cover)
    except (ServiceUnavailable, SessionExpired, TransientError) as exc:
        raise TransientStoreError(f"Neo4j unavailable: {exc}") from exc
