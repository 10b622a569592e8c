"""The Graph page's queries: entity search, a bounded k-hop neighbourhood, a node's chunks,
relations with their evidence, the action records that touched it, and the tasks proposed
from regions that contain it.

Cypher runs in read sessions (`stores.read`); the neighbourhood is expanded hop by hop with a
node cap, so a hub entity cannot make the page wait on an unbounded variable-length match.
"""

from __future__ import annotations

import random
import re

import streamlit as st

from kap.graphstore.queries import DOMAINS
from kap.graphstore.sampling import FIND_EXACT, Hop, walk
from kap.graphstore.text import normalize_name
from kap.ui import stores
from kap.ui.queries import EXCERPT_CHARS, Row, rows

SEARCH = """
CALL db.index.fulltext.queryNodes('entity_names', $query) YIELD node, score
WHERE $domain IS NULL OR node.domain = $domain
RETURN node.id AS id, node.name AS name, node.domain AS domain, score
ORDER BY score DESC LIMIT $limit
"""

ENTITY = """
MATCH (e:Entity {id: $id})
RETURN e.id AS id, e.name AS name, e.domain AS domain, e.type AS type,
       coalesce(e.aliases, []) AS aliases, coalesce(e.coverage, 0) AS coverage,
       COUNT { (:Chunk)-[:PART_OF]->(:Document)-[:ABOUT]->(e) } AS about,
       COUNT { (:Chunk)-[:MENTIONS]->(e) } AS mentions, COUNT { (e)-[:REL]-() } AS relations
"""

# An entity's chunks: those of its own page (Document ABOUT it), and those that mention it.
ENTITY_CHUNKS = """
CALL {
  WITH e MATCH (c:Chunk)-[:PART_OF]->(:Document)-[:ABOUT]->(e) RETURN c, 'about' AS how
  UNION
  WITH e MATCH (c:Chunk)-[:MENTIONS]->(e) RETURN c, 'mentions' AS how
}
"""

FRONTIER = """
MATCH (a:Entity)-[:REL]-(b:Entity) WHERE a.id IN $frontier AND NOT b.id IN $seen
RETURN DISTINCT b.id AS id LIMIT $cap
"""

NODES = """
MATCH (e:Entity) WHERE e.id IN $ids
RETURN e.id AS id, e.name AS name, coalesce(e.coverage, 0) AS coverage,
       COUNT { (e)-[:REL]-() } AS degree
"""

EDGES = """
MATCH (a:Entity)-[r:REL]->(b:Entity) WHERE a.id IN $ids AND b.id IN $ids
RETURN r.id AS id, a.id AS source, b.id AS target, r.predicate AS predicate,
       size(coalesce(r.evidence, [])) AS evidence
"""

CHUNKS = (
    "MATCH (e:Entity {id: $id})"
    + ENTITY_CHUNKS
    + """WITH c, collect(how) AS hows
OPTIONAL MATCH (c)-[:PART_OF]->(d:Document)
RETURN c.id AS id, d.title AS document, c.ord AS ord,
       CASE WHEN 'about' IN hows THEN 'about' ELSE 'mentions' END AS how,
       left(c.text, $chars) AS excerpt, size(c.text) AS chars,
       coalesce(c.coverage, 0) AS coverage
ORDER BY how, document, ord LIMIT $limit
"""
)

RELATIONS = """
MATCH (e:Entity {id: $id})-[r:REL]-(o:Entity)
RETURN r.id AS id, startNode(r) = e AS outgoing, r.predicate AS predicate, o.id AS other_id,
       o.name AS other, coalesce(r.evidence, []) AS evidence
ORDER BY predicate, other LIMIT $limit
"""

CHUNK_TEXTS = """
MATCH (c:Chunk) WHERE c.id IN $ids
OPTIONAL MATCH (c)-[:PART_OF]->(d:Document)
RETURN c.id AS id, d.title AS document, left(c.text, $chars) AS excerpt
"""

CHUNK = """
MATCH (c:Chunk {id: $id})
OPTIONAL MATCH (c)-[:PART_OF]->(d:Document)
OPTIONAL MATCH (d)-[:ABOUT]->(page:Entity)
OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity)
WITH c, d, page, e ORDER BY e.name
RETURN c.id AS id, c.domain AS domain, c.text AS text, coalesce(c.coverage, 0) AS coverage,
       d.title AS document, CASE WHEN page IS NULL THEN null ELSE page {.id, .name} END AS about,
       [x IN collect(e) | {id: x.id, name: x.name}] AS entities
"""

# Action records that read one of the entity's chunks (or the chunk itself).
RECORDS_BY_ENTITY = (
    "MATCH (e:Entity {id: $id})"
    + ENTITY_CHUNKS
    + """MATCH (a:ActionRecord)-[:READ]->(c)
WITH a, collect(DISTINCT c.id) AS chunks
RETURN a.trajectory_id AS trajectory_id, a.t AS t, a.tools AS tools, chunks,
       COUNT { (a)-[:OBSERVED]->() } AS observations, a.is_error AS is_error
ORDER BY trajectory_id, t LIMIT $limit
"""
)

RECORDS_BY_CHUNK = """
MATCH (a:ActionRecord)-[:READ]->(c:Chunk {id: $id})
RETURN a.trajectory_id AS trajectory_id, a.t AS t, a.tools AS tools, [c.id] AS chunks,
       COUNT { (a)-[:OBSERVED]->() } AS observations, a.is_error AS is_error
ORDER BY trajectory_id, t LIMIT $limit
"""

REGION_TASKS = """
SELECT k.id::text AS task_id, c.name AS campaign, k.question, k.gold_answer, k.accepted,
       k.region ->> 'start' AS start, jsonb_array_length(k.hops) AS hops, k.created_at,
       (SELECT count(*) FROM trajectories t WHERE t.task_id = k.id) AS trajectories
FROM tasks k JOIN campaigns c ON c.id = k.campaign_id
WHERE k.region ->> 'start_id' = ANY(:ids)
   OR EXISTS (SELECT 1 FROM jsonb_array_elements(k.hops) h
              WHERE h ->> 'subject_id' = ANY(:ids) OR h ->> 'object_id' = ANY(:ids))
ORDER BY k.created_at DESC LIMIT :limit
"""

_LUCENE_WORD = re.compile(r"\w+")


@st.cache_data(ttl=300, show_spinner=False)
def domains(graph: str) -> list[str]:
    return [r["domain"] for r in stores.read(DOMAINS) if r["domain"]]


@st.cache_data(ttl=60, show_spinner=False)
def search(graph: str, text: str, domain: str | None, limit: int = 20) -> list[Row]:
    """Entities for a search string: the exact (normalized) name first, then full-text hits,
    each word a term (so Lucene syntax in the input is never interpreted)."""
    found = stores.read(FIND_EXACT, norm=normalize_name(text), domain=domain)
    words = [w.lower() for w in _LUCENE_WORD.findall(text)]  # AND/OR/NOT only as words
    if words:
        query = " ".join(f"{w}~" if len(w) > 4 else w for w in words)
        found += stores.read(SEARCH, query=query, domain=domain, limit=limit)
    unique = {r["id"]: {"id": r["id"], "name": r["name"], "domain": r["domain"]} for r in found}
    return list(unique.values())[:limit]


@st.cache_data(ttl=60, show_spinner=False)
def entity(graph: str, entity_id: str) -> Row | None:
    found = stores.read(ENTITY, id=entity_id)
    return found[0] if found else None


@st.cache_data(ttl=60, show_spinner=False)
def neighbourhood(graph: str, entity_id: str, hops: int, cap: int) -> Row:
    """Entities within `hops` REL steps of the entity (at most `cap`, nearest first, each with
    its hop distance) and the facts between them."""
    hop_of = {entity_id: 0}
    frontier = [entity_id]
    for hop in range(1, hops + 1):
        room = cap - len(hop_of)
        if room <= 0 or not frontier:
            break
        found = stores.read(FRONTIER, frontier=frontier, seen=list(hop_of), cap=room)
        frontier = [r["id"] for r in found]
        hop_of.update(dict.fromkeys(frontier, hop))
    ids = list(hop_of)
    nodes = [{**n, "hop": hop_of[n["id"]]} for n in stores.read(NODES, ids=ids)]
    return {"nodes": nodes, "edges": stores.read(EDGES, ids=ids)}


@st.cache_data(ttl=60, show_spinner=False)
def chunks(graph: str, entity_id: str, limit: int = 50) -> list[Row]:
    return stores.read(CHUNKS, id=entity_id, chars=EXCERPT_CHARS, limit=limit)


@st.cache_data(ttl=60, show_spinner=False)
def relations(graph: str, entity_id: str, limit: int = 100) -> list[Row]:
    """The entity's facts, each with its evidence chunks' excerpts."""
    found = stores.read(RELATIONS, id=entity_id, limit=limit)
    ids = list(dict.fromkeys(c for r in found for c in r["evidence"]))
    texts = {r["id"]: r for r in stores.read(CHUNK_TEXTS, ids=ids, chars=EXCERPT_CHARS)}
    return [{**r, "evidence_chunks": [texts[c] for c in r["evidence"] if c in texts]}
            for r in found]  # fmt: skip


@st.cache_data(ttl=60, show_spinner=False)
def chunk(graph: str, chunk_id: str) -> Row | None:
    found = stores.read(CHUNK, id=chunk_id)
    return found[0] if found else None


@st.cache_data(ttl=30, show_spinner=False)
def action_records(graph: str, *, entity_id: str = "", chunk_id: str = "") -> list[Row]:
    if chunk_id:
        return stores.read(RECORDS_BY_CHUNK, id=chunk_id, limit=200)
    return stores.read(RECORDS_BY_ENTITY, id=entity_id, limit=200)


@st.cache_data(ttl=30, show_spinner=False)
def region_tasks(db: str, entity_ids: tuple[str, ...], limit: int = 50) -> list[Row]:
    """Tasks whose sampled region (chain start or any hop's end) contains one of the ids."""
    return rows(REGION_TASKS, ids=list(entity_ids), limit=limit)


def sample_region(entity_id: str, hops: int, seed: int) -> list[Hop]:
    """A seeded relation chain of up to `hops` facts starting at the entity, as the proposer
    samples them (facts with evidence, no entity twice)."""
    return list(stores.graph_call(walk, entity_id, hops, random.Random(seed)))
