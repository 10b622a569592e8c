"""Evidence search on real embeddings: FAISS exact and HNSW vs Neo4j's vector index.

    uv run python benchmarks/evidence_search.py [--queries 500] [--k 10] [--seed 0]

Embeds the MuSiQue paragraphs (/work/shared/data/musique/corpus.json, 1,890 of them) with the
packaged all-MiniLM-L6-v2 and reports the embedding throughput (chunks/s at batch 64). Queries
are the first 12 words of randomly drawn paragraphs. Each way of searching is built over the same
vectors and reports build time, queries/s (one batched call, and one query per call as the
solver issues them) and recall@k against exact search. Neo4j's own vector index is measured
on the same vectors (scratch nodes and index, dropped afterwards) when the Neo4j the settings
point at is up. Prints a table and writes benchmarks/results/evidence_search.json. Runs offline.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import neo4j
import numpy as np
import numpy.typing as npt

from kap.graphstore.connection import connect
from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex
from kap.platform.errors import KapError
from kap.platform.settings import Settings

CORPUS = Path(__file__).resolve().parents[1].parent / "shared/data/musique/corpus.json"
RESULTS = Path(__file__).parent / "results" / "evidence_search.json"

Matrix = npt.NDArray[np.float32]
SearchFn = Callable[[Matrix, int], list[list[str]]]  # queries, k -> ids per query, best first
Builder = Callable[[list[str], Matrix], SearchFn]  # ids, vectors -> a search function


def load_corpus(path: Path) -> list[str]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [f"{row['title']}\n{row['text']}" for row in rows]


def make_queries(paragraphs: list[str], n: int, seed: int) -> list[str]:
    picked = random.Random(seed).sample(paragraphs, min(n, len(paragraphs)))
    return [" ".join(p.split("\n", 1)[-1].split()[:12]) for p in picked]


def embed(embedder: Embedder, texts: list[str]) -> tuple[Matrix, dict[str, Any]]:
    embedder.encode(texts[:64])  # warm-up: first-call allocations are not throughput
    began = time.perf_counter()
    vectors = embedder.encode(texts, batch_size=64)
    seconds = time.perf_counter() - began
    # Throughput depends on length: report the tokens the model actually read (truncated).
    encoded = embedder.tokenizer(texts, truncation=True, max_length=embedder.max_seq_length)
    tokens = sum(len(ids) for ids in encoded["input_ids"])
    stats = {
        "chunks": len(texts),
        "seconds": seconds,
        "chunks_per_s": len(texts) / seconds,
        "mean_tokens": tokens / len(texts),
        "tokens_per_s": tokens / seconds,
    }
    return vectors, stats


# ---- ways of searching: each builds over (ids, vectors) and returns a search function ----


def faiss_index(threshold: int, ef_search: int = 128) -> Builder:
    def build(ids: list[str], vectors: Matrix) -> SearchFn:
        index = EvidenceIndex.build(
            ids, vectors, model_name="bench", exact_threshold=threshold, ef_search=ef_search
        )
        return lambda queries, k: [[i for i, _ in row] for row in index.search(queries, k)]

    return build


NEO4J_QUERY = """
UNWIND range(0, size($queries) - 1) AS i
CALL db.index.vector.queryNodes($index, $k, $queries[i]) YIELD node, score
WITH i, node, score ORDER BY i, score DESC
RETURN i, collect(node.id) AS ids
"""


def neo4j_vector_index(driver: neo4j.Driver, scratch: str) -> Builder:
    """Neo4j's own vector index (Lucene HNSW, cosine) over the same vectors, on scratch nodes."""

    def build(ids: list[str], vectors: Matrix) -> SearchFn:
        rows = [{"id": i, "v": v} for i, v in zip(ids, vectors.tolist(), strict=True)]
        for first in range(0, len(rows), 500):
            driver.execute_query(
                "UNWIND $rows AS row CREATE (n:BenchVector {id: row.id, scratch: $s}) "
                "WITH n, row CALL db.create.setNodeVectorProperty(n, 'embedding', row.v)",
                rows=rows[first : first + 500], s=scratch,
            )  # fmt: skip
        driver.execute_query(
            f"CREATE VECTOR INDEX `{scratch}` FOR (n:BenchVector) ON n.embedding OPTIONS "
            "{indexConfig: {`vector.dimensions`: $dim, `vector.similarity_function`: 'cosine'}}",
            dim=vectors.shape[1],
        )
        driver.execute_query("CALL db.awaitIndexes(600)")

        def search(queries: Matrix, k: int) -> list[list[str]]:
            records = driver.execute_query(
                NEO4J_QUERY, queries=queries.tolist(), k=k, index=scratch
            ).records
            return [r["ids"] for r in sorted(records, key=lambda r: r["i"])]

        return search

    return build


def drop_scratch(driver: neo4j.Driver, scratch: str) -> None:
    driver.execute_query(f"DROP INDEX `{scratch}` IF EXISTS")
    with driver.session() as session:  # CALL ... IN TRANSACTIONS needs an implicit transaction
        session.run(
            "MATCH (n:BenchVector {scratch: $s}) CALL (n) { DETACH DELETE n } IN TRANSACTIONS",
            s=scratch,
        ).consume()


def ways(driver: neo4j.Driver | None, scratch: str) -> dict[str, Builder]:
    found: dict[str, Builder] = {
        "faiss exact (flat)": faiss_index(threshold=1 << 62),
        "faiss hnsw ef=16": faiss_index(threshold=0, ef_search=16),
        "faiss hnsw ef=128": faiss_index(threshold=0, ef_search=128),
    }
    if driver is not None:
        found["neo4j vector index"] = neo4j_vector_index(driver, scratch)
    return found


def neo4j_driver() -> neo4j.Driver | None:
    """The Neo4j the settings point at, or None (with the reason printed) when unreachable."""
    try:
        driver = connect(Settings())
        driver.verify_connectivity()
    except (KapError, neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError) as exc:
        print(f"neo4j vector index skipped: {exc} (run `kap services up`)")
        return None
    return driver


def recall(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    hits = [len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True)]
    return sum(hits) / (k * len(truth))


def measure(build: Builder, ids: list[str], vectors: Matrix, queries: Matrix, k: int) -> Any:
    began = time.perf_counter()
    search = build(ids, vectors)
    built = time.perf_counter() - began
    began = time.perf_counter()
    found = search(queries, k)
    batched = time.perf_counter() - began
    began = time.perf_counter()
    for q in queries:
        search(q[None, :], k)
    single = time.perf_counter() - began
    n = len(queries)
    return found, {"build_s": built, "qps_batched": n / batched, "qps_single": n / single}


def run(args: argparse.Namespace) -> dict[str, Any]:
    embedder = Embedder()
    paragraphs = load_corpus(CORPUS)
    vectors, embedding = embed(embedder, paragraphs)
    queries = embedder.encode(make_queries(paragraphs, args.queries, args.seed))
    ids = [f"chunk:{i}" for i in range(len(paragraphs))]
    results: dict[str, Any] = {}
    truth: list[list[str]] | None = None
    driver, scratch = neo4j_driver(), f"bench_vectors_{uuid.uuid4().hex[:8]}"
    try:
        for name, build in ways(driver, scratch).items():
            found, stats = measure(build, ids, vectors, queries, args.k)
            truth = truth or found  # the first way is exact search
            results[name] = {**stats, f"recall_at_{args.k}": recall(found, truth, args.k)}
    finally:
        if driver is not None:
            drop_scratch(driver, scratch)
            driver.close()
    embedding |= {"model": embedder.name, "device": embedder.device}
    return {"embedding": embedding, "search": results, "vectors": list(vectors.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = run(args)
    emb = out["embedding"]
    machine = {
        "node": platform.node(),
        "python": platform.python_version(),
        "cpus": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "device": emb["device"],
    }
    print(f"\n{emb['model']} on {emb['device']}, {platform.node()} ({machine['cpus']} threads)")
    print(
        f"embedded {emb['chunks']} chunks ({emb['mean_tokens']:.0f} tokens on average) in "
        f"{emb['seconds']:.1f} s: {emb['chunks_per_s']:.1f} chunks/s, "
        f"{emb['tokens_per_s']:.0f} tokens/s at batch 64"
    )
    n, dim = out["vectors"]
    print(f"\n{args.queries} queries, k={args.k}, over {n} x {dim} vectors")
    print(f"{'way':<20}{'build s':>9}{'q/s batch':>12}{'q/s single':>12}{'recall':>8}")
    for name, r in out["search"].items():
        print(
            f"{name:<20}{r['build_s']:>9.3f}{r['qps_batched']:>12.0f}{r['qps_single']:>12.0f}"
            f"{r[f'recall_at_{args.k}']:>8.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"params": vars(args), "machine": machine, **out}, indent=2))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
