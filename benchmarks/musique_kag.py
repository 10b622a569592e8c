"""How well the KAG built from MuSiQue serves its 100 multi-hop questions.

    uv run python benchmarks/musique_kag.py [--k 10]

Ingests the real corpus into a scratch domain of the Neo4j the settings point at, then
measures chain recovery (strict and bridged) and evidence recall@10 for the 100 questions'
gold decompositions, as `kap.graphstore.quality` defines them.
Prints a table and writes benchmarks/results/musique_kag.json.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from kap.graphstore.connection import connect
from kap.graphstore.embed import Embedder
from kap.graphstore.indexing import build_index
from kap.graphstore.ingest import Ingestor
from kap.graphstore.loaders import load_file
from kap.graphstore.quality import chain_recovery, evidence_recall
from kap.graphstore.schema import ensure_schema
from kap.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "musique"
RESULTS = ROOT / "benchmarks" / "results" / "musique_kag.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10, help="evidence recall@k (default 10)")
    args = parser.parse_args()
    settings = Settings()
    db = settings.neo4j_database
    domain = f"bench-musique-{uuid.uuid4().hex[:8]}"
    embedder = Embedder()
    with connect(settings) as driver:
        ensure_schema(driver, database=db)
        try:
            began = time.perf_counter()
            Ingestor(driver, domain, database=db).run(load_file(DATA / "corpus.json"))
            ingest_s = time.perf_counter() - began
            began = time.perf_counter()
            index = build_index(driver, domain, embedder, database=db)
            embed_s = time.perf_counter() - began
            questions = json.loads((DATA / "questions.json").read_text())
            strict, bridged = chain_recovery(driver, domain, questions, database=db)
            recall, subqs = evidence_recall(
                driver, domain, questions, index, embedder, k=args.k, database=db
            )
            out = {"questions": len(questions), "chain_recovery_strict": strict,
                   "chain_recovery_bridged": bridged, "sub_questions": subqs,
                   f"evidence_recall_at_{args.k}": recall}  # fmt: skip
        finally:
            driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain, database_=db)
    out |= {"ingest_seconds": ingest_s, "index_seconds": embed_s, "chunks": len(index)}
    for key, value in out.items():
        print(f"{key:<26}{value:>10.3f}" if isinstance(value, float) else f"{key:<26}{value:>10}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
