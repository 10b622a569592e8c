"""How well a KAG serves multi-hop questions in the MuSiQue format (gold decompositions).

- chain recovery: consecutive supporting paragraphs linked in the graph in gold hop order,
  (a) strictly: a REL fact from hop i's page entity to hop i+1's page entity;
  (b) bridged: a chunk of hop i's paragraph mentions hop i+1's page entity, or an entity that
      a chunk of hop i+1's paragraph also mentions.
- evidence recall@k: for each sub-question (earlier hop answers substituted for #1, #2),
  whether a chunk of its supporting paragraph is among the k nearest in the evidence index.

Used by `benchmarks/musique_kag.py` and by the floor tests on the real corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import neo4j

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex
from kap.graphstore.ingest import entity_id
from kap.graphstore.text import content_id

STRICT = """
MATCH (:Entity {id: $a})-[r:REL]->(:Entity {id: $b}) RETURN count(r) > 0 AS ok
"""
BRIDGED = """
MATCH (ca:Chunk)-[:PART_OF]->(:Document {id: $doc_a})
MATCH (ca)-[:MENTIONS]->(e:Entity)
WHERE e.id = $page_b OR EXISTS {
  MATCH (cb:Chunk)-[:PART_OF]->(:Document {id: $doc_b}) MATCH (cb)-[:MENTIONS]->(e) }
RETURN count(e) > 0 AS ok
"""
DOC_CHUNKS = "MATCH (c:Chunk)-[:PART_OF]->(:Document {id: $id}) RETURN collect(c.id) AS ids"

Question = dict[str, Any]


@dataclass(frozen=True)
class Hop:
    question: str  # the sub-question, earlier answers substituted
    document_id: str  # the supporting paragraph's Document
    page_id: str  # the paragraph's title entity


def substitute(question: str, answers: list[str]) -> str:
    """'Who founded #1?' with answers ['Acme'] -> 'Who founded Acme?'."""
    return re.sub(r"#(\d+)", lambda m: answers[int(m.group(1)) - 1], question)


def gold_hops(question: Question, domain: str) -> list[Hop]:
    steps = question["question_decomposition"]
    answers = [s["answer"] for s in steps]
    hops = []
    for step in steps:
        para = question["paragraphs"][step["paragraph_support_idx"]]
        doc = content_id("doc", domain, para["title"], para["paragraph_text"])
        hops.append(
            Hop(substitute(step["question"], answers), doc, entity_id(domain, para["title"]))
        )
    return hops


def _ok(driver: neo4j.Driver, query: str, database: str, **params: str) -> bool:
    return bool(driver.execute_query(query, params, database_=database).records[0]["ok"])


def chain_recovery(
    driver: neo4j.Driver, domain: str, questions: list[Question], *, database: str = "neo4j"
) -> tuple[float, float]:
    """(strict, bridged): the share of questions whose every consecutive hop pair is linked."""
    strict = bridged = 0
    for question in questions:
        hops = gold_hops(question, domain)
        pairs = list(pairwise(hops))
        strict += all(_ok(driver, STRICT, database, a=a.page_id, b=b.page_id) for a, b in pairs)
        bridged += all(
            _ok(driver, BRIDGED, database, doc_a=a.document_id, doc_b=b.document_id,
                page_b=b.page_id)
            for a, b in pairs
        )  # fmt: skip
    return strict / len(questions), bridged / len(questions)


def evidence_recall(
    driver: neo4j.Driver,
    domain: str,
    questions: list[Question],
    index: EvidenceIndex,
    embedder: Embedder,
    *,
    k: int = 10,
    database: str = "neo4j",
) -> tuple[float, int]:
    """(recall@k over every sub-question, the number of sub-questions)."""
    hops = [hop for q in questions for hop in gold_hops(q, domain)]
    results = index.search(embedder.encode([h.question for h in hops]), k)
    hits = 0
    for hop, top in zip(hops, results, strict=True):
        gold = driver.execute_query(DOC_CHUNKS, id=hop.document_id, database_=database)
        hits += bool(set(gold.records[0]["ids"]) & {cid for cid, _ in top})
    return hits / len(hops), len(hops)
