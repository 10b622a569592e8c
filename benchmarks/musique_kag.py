"""How well the KAG built from MuSiQue serves its 100 multi-hop questions.

    uv run python benchmarks/musique_kag.py

Ingests the real corpus into a scratch domain of the Neo4j the settings point at, then for
each question's gold decomposition measures:
- chain recovery: consecutive supporting paragraphs linked in the graph in gold hop order,
  (a) strictly, a REL fact from hop i's page entity to hop i+1's page entity, and
  (b) through a bridge, hop i's chunks and hop i+1's page or chunks meeting at one entity;
- evidence recall@10: for each sub-question (earlier answers substituted for #1, #2), whether
  a chunk of its supporting paragraph is among the 10 nearest in the FAISS evidence index.
Prints a table and writes benchmarks/results/musique_kag.json.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import neo4j

from kap.graphstore.connection import connect
from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex
from kap.graphstore.indexing import build_index
from kap.graphstore.ingest import Ingestor, entity_id
from kap.graphstore.loaders import load_file
from kap.graphstore.schema import ensure_schema
from kap.graphstore.text import content_id
from kap.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "musique"
RESULTS = ROOT / "benchmarks" / "results" / "musique_kag.json"

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


def substitute(question: str, answers: list[str]) -> str:
    return re.sub(r"#(\d+)", lambda m: answers[int(m.group(1)) - 1], question)


def measure(
    driver: neo4j.Driver, domain: str, index: EvidenceIndex, embedder: Embedder
) -> dict[str, Any]:
    questions = json.loads((DATA / "questions.json").read_text())
    strict = bridged = hits = subqs = 0
    for q in questions:
        paras = [q["paragraphs"][h["paragraph_support_idx"]] for h in q["question_decomposition"]]
        docs = [content_id("doc", domain, p["title"], p["paragraph_text"]) for p in paras]
        pages = [entity_id(domain, p["title"]) for p in paras]
        pairs = list(zip(range(len(paras) - 1), range(1, len(paras)), strict=True))
        strict += all(driver.execute_query(STRICT, a=pages[i], b=pages[j]).records[0]["ok"]
                      for i, j in pairs)  # fmt: skip
        bridged += all(
            driver.execute_query(BRIDGED, doc_a=docs[i], doc_b=docs[j], page_b=pages[j]).records[0][
                "ok"
            ]
            for i, j in pairs
        )
        answers = [h["answer"] for h in q["question_decomposition"]]
        for hop, doc in zip(q["question_decomposition"], docs, strict=True):
            query = substitute(hop["question"], answers)
            gold = set(driver.execute_query(DOC_CHUNKS, id=doc).records[0]["ids"])
            top = {cid for cid, _ in index.search(embedder.encode([query]), 10)[0]}
            hits += bool(gold & top)
            subqs += 1
    n = len(questions)
    return {"questions": n, "chain_recovery_strict": strict / n,
            "chain_recovery_bridged": bridged / n, "sub_questions": subqs,
            "evidence_recall_at_10": hits / subqs}  # fmt: skip


def main() -> None:
    settings = Settings()
    domain = f"bench-musique-{uuid.uuid4().hex[:8]}"
    embedder = Embedder()
    with connect(settings) as driver:
        ensure_schema(driver)
        try:
            began = time.perf_counter()
            Ingestor(driver, domain).run(load_file(DATA / "corpus.json"))
            ingest_s = time.perf_counter() - began
            began = time.perf_counter()
            index = build_index(driver, domain, embedder)
            embed_s = time.perf_counter() - began
            out = measure(driver, domain, index, embedder)
        finally:
            driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)
    out |= {"ingest_seconds": ingest_s, "index_seconds": embed_s, "chunks": len(index)}
    for key, value in out.items():
        print(f"{key:<26}{value:>10.3f}" if isinstance(value, float) else f"{key:<26}{value:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
