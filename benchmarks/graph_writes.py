"""Neo4j write throughput: batched `UNWIND $rows ... MERGE` versus one transaction per row.

    uv run python benchmarks/graph_writes.py [--documents 600] [--batch-size 200]

Both ways write exactly the same rows (the MuSiQue corpus's first N paragraphs, chunked and
matched by the ingestion code) into two scratch domains of the Neo4j the settings point at
(`make bench` starts the local one); the graphs they give are compared, then deleted. Prints a
table and writes benchmarks/results/graph_writes.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from pathlib import Path
from typing import Any

import neo4j

from kap.graphstore import queries as Q
from kap.graphstore.connection import connect
from kap.graphstore.ingest import Ingestor
from kap.graphstore.records import LoadResult, SourceDocument
from kap.graphstore.schema import ensure_schema
from kap.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "musique" / "corpus.json"
RESULTS = ROOT / "benchmarks" / "results" / "graph_writes.json"


def corpus(n: int) -> LoadResult:
    records = json.loads(CORPUS.read_text())[:n]
    docs = [
        SourceDocument(r["title"], r["text"], f"{CORPUS.name}#{i}") for i, r in enumerate(records)
    ]
    return LoadResult(documents=docs)


def write_per_row(driver: neo4j.Driver, ingestor: Ingestor, result: LoadResult) -> int:
    """The naive way: every row its own managed transaction."""
    entities, matcher = ingestor.entities(result)
    rows = 0
    with driver.session() as session:
        for entity in entities:
            session.execute_write(lambda tx, e=entity: tx.run(Q.MERGE_ENTITIES, rows=[e]).consume())
            rows += 1
        for batch, _ in ingestor.batches(result, matcher):
            for query, batch_rows in batch.statements():
                for row in batch_rows:
                    session.execute_write(lambda tx, q=query, r=row: tx.run(q, rows=[r]).consume())
                    rows += 1
    return rows


def graph_size(driver: neo4j.Driver, domain: str) -> tuple[int, int]:
    rec = driver.execute_query(
        "MATCH (n {domain: $d}) OPTIONAL MATCH (n)-[r]->() RETURN count(DISTINCT n) AS n, "
        "count(r) AS r",
        d=domain,
    ).records[0]
    return rec["n"], rec["r"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()
    result = corpus(args.documents)
    settings = Settings()
    tag = uuid.uuid4().hex[:8]
    batched, per_row = f"bench-batched-{tag}", f"bench-per-row-{tag}"
    out: dict[str, Any] = {}
    with connect(settings) as driver:
        ensure_schema(driver, database=settings.neo4j_database)
        try:
            began = time.perf_counter()
            stats = Ingestor(driver, batched, batch_size=args.batch_size).run(result)
            out["batched UNWIND"] = {"seconds": time.perf_counter() - began}
            began = time.perf_counter()
            rows = write_per_row(driver, Ingestor(driver, per_row), result)
            out["one tx per row"] = {"seconds": time.perf_counter() - began}
            sizes = {graph_size(driver, batched), graph_size(driver, per_row)}
            assert len(sizes) == 1, f"the two ways built different graphs: {sizes}"
        finally:
            for domain in (batched, per_row):
                driver.execute_query("MATCH (n {domain: $d}) DETACH DELETE n", d=domain)
    for way in out.values():
        way["rows_per_s"] = rows / way["seconds"]
    base = out["one tx per row"]["seconds"]
    print(f"\n{args.documents} documents -> {stats.chunks} chunks, {rows} rows, {platform.node()}")
    print(f"{'way':<18}{'seconds':>10}{'rows/s':>10}{'speed-up':>10}")
    for name, r in out.items():
        print(
            f"{name:<18}{r['seconds']:>10.2f}{r['rows_per_s']:>10.0f}{base / r['seconds']:>9.1f}x"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"params": vars(args), "rows": rows, "results": out,
                                   "machine": platform.node()}, indent=2))  # fmt: skip
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
