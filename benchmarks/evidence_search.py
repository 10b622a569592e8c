"""Evidence search on real embeddings: FAISS exact (flat) vs FAISS HNSW, side by side.

    uv run python benchmarks/evidence_search.py [--queries 500] [--k 10] [--seed 0]

Embeds the MuSiQue paragraphs (/work/shared/data/musique/corpus.json, 1,890 of them) with the
packaged all-MiniLM-L6-v2 and reports the embedding throughput (chunks/s at batch 64). Queries
are the first 12 words of randomly drawn paragraphs. Each way of searching is built over the same
vectors and reports build time, queries/s (one batched call, and one query per call as the
solver issues them) and recall@k against exact search. Prints a table and writes
benchmarks/results/evidence_search.json. Needs no service; runs offline.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex

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


# A Neo4j vector-index column plugs in here as one more Builder: write the vectors onto Chunk
# nodes, create the vector index, and return a function calling db.index.vector.queryNodes.
WAYS: dict[str, Builder] = {
    "faiss exact (flat)": faiss_index(threshold=1 << 62),
    "faiss hnsw ef=16": faiss_index(threshold=0, ef_search=16),
    "faiss hnsw ef=128": faiss_index(threshold=0, ef_search=128),
}


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
    for name, build in WAYS.items():
        found, stats = measure(build, ids, vectors, queries, args.k)
        truth = truth or found  # the first way is exact search
        results[name] = {**stats, f"recall_at_{args.k}": recall(found, truth, args.k)}
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
