"""Graph-region sampling for the proposer: relation chains, neighbourhoods, random walks.

Sampling is seeded: candidates are read from Neo4j in a fixed order (by id) and chosen with
`random.Random(seed)` in Python, since Cypher's `rand()` cannot be seeded. With
`prefer_unexplored`, a start is drawn with weight 1 / (1 + coverage), where `coverage` counts
the action records of earlier campaigns that touched the entity (the self-play graph-search
loop), so regions left unexplored come up more often.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import neo4j

from kap.platform.errors import GraphStoreError

MAX_HOPS = 6

START_CANDIDATES = """
MATCH (e:Entity {domain: $domain})-[r:REL]->()
WHERE size(r.evidence) > 0
RETURN e.id AS id, coalesce(e.coverage, 0) AS coverage, count(r) AS degree
ORDER BY id
"""

OUTGOING = """
MATCH (s:Entity {id: $id})-[r:REL]->(o:Entity)
WHERE size(r.evidence) > 0 AND ($predicates IS NULL OR r.predicate IN $predicates)
RETURN r.id AS rel_id, r.predicate AS predicate, r.evidence AS evidence,
       s.name AS subject_name, o.id AS object_id, o.name AS object_name
ORDER BY rel_id
"""

FOLLOW = """
MATCH (s:Entity)-[r:REL {predicate: $predicate}]->(o:Entity)
WHERE s.id IN $frontier AND size(r.evidence) > 0
RETURN collect(DISTINCT o.id) AS ids
"""


NEIGHBOUR_IDS = """
MATCH (:Entity {id: $id})-[:REL]-(o:Entity)
RETURN DISTINCT o.id AS id ORDER BY id
"""


@dataclass(frozen=True)
class Hop:
    subject_id: str
    subject_name: str
    predicate: str
    object_id: str
    object_name: str
    rel_id: str
    evidence: tuple[str, ...]  # chunk ids that support this hop


@dataclass(frozen=True)
class Chain:
    domain: str
    hops: tuple[Hop, ...]

    @property
    def start(self) -> str:
        return self.hops[0].subject_id

    @property
    def answer(self) -> str:
        return self.hops[-1].object_id

    @property
    def predicates(self) -> tuple[str, ...]:
        return tuple(h.predicate for h in self.hops)


def _check_hops(hops: int) -> None:
    if not 1 <= hops <= MAX_HOPS:
        raise GraphStoreError(f"hops must be between 1 and {MAX_HOPS}, got {hops}")


def _starts(
    driver: neo4j.Driver, domain: str, database: str, *, prefer_unexplored: bool
) -> tuple[list[str], list[float]]:
    rows = driver.execute_query(START_CANDIDATES, domain=domain, database_=database).records
    if not rows:
        raise GraphStoreError(f"domain {domain!r} has no relations with evidence to sample")
    ids = [r["id"] for r in rows]
    weights = [1.0 / (1 + r["coverage"]) if prefer_unexplored else 1.0 for r in rows]
    return ids, weights


def sample_chains(
    driver: neo4j.Driver,
    domain: str,
    hops: int,
    *,
    n: int = 1,
    seed: int = 0,
    predicates: list[str] | None = None,
    prefer_unexplored: bool = False,
    max_tries: int = 200,
    database: str = "neo4j",
) -> list[Chain]:
    """Up to `n` distinct k-hop chains over REL facts, no entity visited twice in a chain."""
    _check_hops(hops)
    rng = random.Random(seed)
    ids, weights = _starts(driver, domain, database, prefer_unexplored=prefer_unexplored)
    chains: dict[tuple[str, ...], Chain] = {}
    for _ in range(max_tries):
        if len(chains) == n:
            break
        start = rng.choices(ids, weights=weights)[0]
        chain = _walk_chain(driver, domain, start, hops, rng, predicates, database)
        if chain is not None:
            chains.setdefault(tuple(h.rel_id for h in chain.hops), chain)
    return list(chains.values())


def _walk_chain(
    driver: neo4j.Driver,
    domain: str,
    start: str,
    hops: int,
    rng: random.Random,
    predicates: list[str] | None,
    database: str,
) -> Chain | None:
    path = walk(driver, start, hops, rng, predicates=predicates, database=database)
    return Chain(domain, tuple(path)) if len(path) == hops else None


def walk(
    driver: neo4j.Driver,
    start: str,
    hops: int,
    rng: random.Random,
    *,
    predicates: list[str] | None = None,
    database: str = "neo4j",
) -> list[Hop]:
    """Up to `hops` facts with evidence from `start`, each a random outgoing one to an entity
    not visited yet, as the proposer samples chains; shorter where the walk gets stuck."""
    path: list[Hop] = []
    seen = {start}
    current = start
    for _ in range(hops):
        rows = driver.execute_query(
            OUTGOING, id=current, predicates=predicates, database_=database
        ).records
        options = [r for r in rows if r["object_id"] not in seen]
        if not options:
            break
        r = rng.choice(options)
        path.append(Hop(current, r["subject_name"], r["predicate"], r["object_id"],
                        r["object_name"], r["rel_id"], tuple(r["evidence"])))  # fmt: skip
        seen.add(r["object_id"])
        current = r["object_id"]
    return path


def count_satisfying(
    driver: neo4j.Driver, start_id: str, predicates: tuple[str, ...], *, database: str = "neo4j"
) -> int:
    """How many entities the chain start -p1-> ? -p2-> ... -pk-> ? reaches (1: unambiguous)."""
    frontier = [start_id]
    for predicate in predicates:
        frontier = driver.execute_query(
            FOLLOW, frontier=frontier, predicate=predicate, database_=database
        ).records[0]["ids"]
        if not frontier:
            return 0
    return len(frontier)


def random_walk(
    driver: neo4j.Driver, domain: str, length: int, *, seed: int = 0, database: str = "neo4j"
) -> list[str]:
    """Entity ids visited by a seeded walk along REL facts (either direction), no revisits."""
    rng = random.Random(seed)
    ids, weights = _starts(driver, domain, database, prefer_unexplored=False)
    walk = [rng.choices(ids, weights=weights)[0]]
    for _ in range(length - 1):
        rows = driver.execute_query(NEIGHBOUR_IDS, id=walk[-1], database_=database).records
        options = [r["id"] for r in rows if r["id"] not in walk]
        if not options:
            break
        walk.append(rng.choice(options))
    return walk


def neighbourhood(
    driver: neo4j.Driver, entity_id: str, hops: int, *, limit: int = 500, database: str = "neo4j"
) -> dict[str, Any]:
    """Entities within `hops` REL steps of an entity, and the facts between them."""
    _check_hops(hops)
    # A variable-length bound cannot be a parameter; `hops` is a checked int, never text.
    query = (
        f"MATCH (e:Entity {{id: $id}}) "
        f"OPTIONAL MATCH (e)-[:REL*1..{int(hops)}]-(x:Entity) "
        "WITH e, collect(DISTINCT x)[..$limit] AS others "
        "WITH [e] + others AS nodes "
        "UNWIND nodes AS a MATCH (a)-[r:REL]->(b) WHERE b IN nodes "
        "RETURN [n IN nodes | {id: n.id, name: n.name}] AS nodes, "
        "collect({id: r.id, source: a.id, target: b.id, predicate: r.predicate, "
        "evidence: r.evidence}) AS relations"
    )
    records = driver.execute_query(query, id=entity_id, limit=limit, database_=database).records
    if not records:
        exists = driver.execute_query(
            "MATCH (e:Entity {id: $id}) RETURN e.name AS name", id=entity_id, database_=database
        ).records
        if not exists:
            raise GraphStoreError(f"no entity with id {entity_id!r}")
        return {"nodes": [{"id": entity_id, "name": exists[0]["name"]}], "relations": []}
    return {"nodes": records[0]["nodes"], "relations": records[0]["relations"]}


FIND_EXACT = """
MATCH (e:Entity) WHERE e.norm = $norm AND ($domain IS NULL OR e.domain = $domain)
RETURN e.id AS id, e.name AS name, e.domain AS domain ORDER BY e.domain LIMIT 1
"""

FIND_FULLTEXT = """
CALL db.index.fulltext.queryNodes('entity_names', $query) YIELD node, score
WHERE $domain IS NULL OR node.domain = $domain
RETURN node.id AS id, node.name AS name, node.domain AS domain LIMIT 1
"""


def find_entity(
    driver: neo4j.Driver, name: str, *, domain: str | None = None, database: str = "neo4j"
) -> dict[str, str]:
    """The entity named `name`: an exact normalized match first, else the best full-text hit."""
    from kap.graphstore.text import normalize_name

    rows = driver.execute_query(
        FIND_EXACT, norm=normalize_name(name), domain=domain, database_=database
    ).records
    if not rows:
        # Lucene syntax in a user's string must not break the query: quote it as a phrase.
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        rows = driver.execute_query(
            FIND_FULLTEXT, query=phrase, domain=domain, database_=database
        ).records
    if not rows:
        raise GraphStoreError(f"no entity named {name!r}" + (f" in {domain!r}" if domain else ""))
    return {"id": rows[0]["id"], "name": rows[0]["name"], "domain": rows[0]["domain"]}


TOOL_STARTS = """
MATCH (t:Tool {domain: $domain})-[:FEEDS]->()
RETURN DISTINCT t.id AS id ORDER BY id
"""

TOOL_NEXT = """
MATCH (:Tool {id: $id})-[f:FEEDS]->(n:Tool)
RETURN n.id AS id, f.type AS type ORDER BY id
"""


def sample_tool_chain(
    driver: neo4j.Driver, domain: str, length: int, *, seed: int = 0, database: str = "neo4j"
) -> list[str]:
    """A seeded chain of up to `length` tool ids, each feeding its output to the next."""
    _check_hops(length)
    rng = random.Random(seed)
    starts = [r["id"] for r in driver.execute_query(
        TOOL_STARTS, domain=domain, database_=database).records]  # fmt: skip
    if not starts:
        raise GraphStoreError(f"domain {domain!r} has no tools that feed one another")
    chain = [rng.choice(starts)]
    while len(chain) < length:
        rows = driver.execute_query(TOOL_NEXT, id=chain[-1], database_=database).records
        options = [r["id"] for r in rows if r["id"] not in chain]
        if not options:
            break
        chain.append(rng.choice(options))
    return chain
