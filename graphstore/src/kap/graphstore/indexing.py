"""Builds, verifies and searches the per-domain evidence index over the Chunks in Neo4j.

    kap index build --domain D      kap index verify --domain D
    kap evidence search "TEXT" --domain D -k 10 [--json]

The index lives under the state directory, `indices/<domain slug>/`, beside its manifest
(model name, dimension, id map, checksum). `verify` compares it with Neo4j: every chunk of
the domain must be indexed, and nothing else, with the embedder the caller names.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import neo4j

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import MANIFEST, EvidenceIndex
from kap.platform.errors import GraphStoreError

CHUNKS = """
MATCH (c:Chunk {domain: $domain})
RETURN c.id AS id, c.text AS text ORDER BY c.id
"""

CHUNK_IDS = "MATCH (c:Chunk {domain: $domain}) RETURN collect(c.id) AS ids"

CHUNK_TITLES = """
MATCH (c:Chunk)-[:PART_OF]->(d:Document) WHERE c.id IN $ids
RETURN c.id AS id, d.title AS title
"""


def index_dir(state_dir: Path, domain: str) -> Path:
    """A folder name safe for any domain string: a readable slug plus a short hash."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", domain).strip("-.")[:40] or "domain"
    digest = hashlib.sha256(domain.encode()).hexdigest()[:8]
    return state_dir / "indices" / f"{slug}-{digest}"


def saved_index_dir(state_dir: Path, domain: str) -> Path | None:
    """The domain's index folder if an index was saved there, else None."""
    directory = index_dir(state_dir, domain)
    return directory if (directory / MANIFEST).exists() else None


def require_index_dir(state_dir: Path, domain: str) -> Path:
    directory = saved_index_dir(state_dir, domain)
    if directory is None:
        raise GraphStoreError(
            f"no evidence index for {domain!r} at {index_dir(state_dir, domain)}: "
            f"run `kap index build --domain {domain}`"
        )
    return directory


def build_index(
    driver: neo4j.Driver, domain: str, embedder: Embedder, *, database: str = "neo4j"
) -> EvidenceIndex:
    rows = driver.execute_query(CHUNKS, domain=domain, database_=database).records
    if not rows:
        raise GraphStoreError(f"domain {domain!r} has no chunks to index; run `kap ingest` first")
    vectors = embedder.encode([r["text"] for r in rows], show_progress=True)
    return EvidenceIndex.build([r["id"] for r in rows], vectors, model_name=embedder.name)


def verify_index(
    driver: neo4j.Driver, domain: str, directory: Path, embedder: Embedder, *, database: str
) -> dict[str, Any]:
    """Compare the saved index with Neo4j; `ok` only when both hold exactly the same chunks."""
    index = EvidenceIndex.load(directory, expect_model=embedder.name, expect_dim=embedder.dim)
    graph = set(
        driver.execute_query(CHUNK_IDS, domain=domain, database_=database).records[0]["ids"]
    )
    indexed = set(index.ids())
    missing, extra = sorted(graph - indexed), sorted(indexed - graph)
    return {"domain": domain, "directory": str(directory), "model": index.model_name,
            "indexed": len(indexed), "chunks": len(graph), "missing": missing[:20],
            "n_missing": len(missing), "extra": extra[:20], "n_extra": len(extra),
            "ok": not missing and not extra}  # fmt: skip


def search_evidence(
    driver: neo4j.Driver, index: EvidenceIndex, embedder: Embedder, text: str, k: int,
    *, database: str = "neo4j",
) -> list[dict[str, Any]]:  # fmt: skip
    """Best-first `{"chunk_id", "title", "score"}` for the chunks closest to `text`."""
    hits = index.search(embedder.encode([text]), k)[0]
    titles = {
        r["id"]: r["title"]
        for r in driver.execute_query(
            CHUNK_TITLES, ids=[h[0] for h in hits], database_=database
        ).records
    }
    return [{"chunk_id": cid, "title": titles.get(cid), "score": score} for cid, score in hits]
