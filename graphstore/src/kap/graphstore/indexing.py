"""Builds, verifies and searches the per-domain evidence index over the Chunks in Neo4j.

    kap index build --domain D [--rebuild]      kap index verify --domain D
    kap evidence search "TEXT" --domain D -k 10 [--json]

The index lives under the state directory, `indices/<domain slug>/`, beside its manifest
(model name, dimension, id map, checksum). `verify` compares it with Neo4j: every chunk of
the domain must be indexed, and nothing else, with the embedder the caller names. `build`
after a first build, and `kap ingest` when an index exists, only embed the chunks that are new.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import neo4j

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import MANIFEST, EvidenceIndex, IndexKind
from kap.platform.errors import GraphStoreError

CHUNKS = """
MATCH (c:Chunk {domain: $domain})
RETURN c.id AS id, c.text AS text ORDER BY c.id
"""

CHUNK_IDS = "MATCH (c:Chunk {domain: $domain}) RETURN collect(c.id) AS ids"

CHUNK_TEXTS = "MATCH (c:Chunk) WHERE c.id IN $ids RETURN c.id AS id, c.text AS text ORDER BY c.id"

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


def load_domain_index(state_dir: Path, domain: str, embedder: Embedder) -> EvidenceIndex:
    """The domain's saved index, checked to be of `embedder`'s model and dimension."""
    directory = require_index_dir(state_dir, domain)
    return EvidenceIndex.load(directory, expect_model=embedder.name, expect_dim=embedder.dim)


def build_index(
    driver: neo4j.Driver, domain: str, embedder: Embedder, *, database: str = "neo4j"
) -> EvidenceIndex:
    rows = driver.execute_query(CHUNKS, domain=domain, database_=database).records
    if not rows:
        raise GraphStoreError(f"domain {domain!r} has no chunks to index; run `kap ingest` first")
    vectors = embedder.encode([r["text"] for r in rows], show_progress=True)
    return EvidenceIndex.build([r["id"] for r in rows], vectors, model_name=embedder.name)


@dataclass(frozen=True)
class IndexUpdate:
    index: EvidenceIndex
    added: int
    removed: int
    rebuilt: bool  # re-laid out (kind change or compaction) from stored vectors, not re-embedded


def update_index(
    driver: neo4j.Driver,
    domain: str,
    embedder: Embedder,
    index: EvidenceIndex,
    *,
    database: str = "neo4j",
    max_tombstone_share: float = 0.2,
) -> IndexUpdate:
    """Bring a saved index in line with Neo4j: embed only the new chunks, drop the gone ones.

    A flat index that outgrows its exact threshold is re-laid out as HNSW, and an HNSW index
    whose tombstones pass `max_tombstone_share` is compacted, both from the stored vectors.
    """
    if index.model_name != embedder.name or index.dim != embedder.dim:
        raise GraphStoreError(
            f"evidence index of {domain!r} was built with {index.model_name!r}, not "
            f"{embedder.name!r}: rebuild it (`kap index build --domain {domain} --rebuild`)"
        )
    graph = set(
        driver.execute_query(CHUNK_IDS, domain=domain, database_=database).records[0]["ids"]
    )
    indexed = set(index.ids())
    removed = index.remove(indexed - graph)
    new = sorted(graph - indexed)
    if new:
        rows = driver.execute_query(CHUNK_TEXTS, ids=new, database_=database).records
        index.add([r["id"] for r in rows], embedder.encode([r["text"] for r in rows]))
    rebuilt = False
    grew_past = index.kind is IndexKind.FLAT and len(index) >= index.exact_threshold
    if grew_past or index.tombstones > max_tombstone_share * max(index.ntotal, 1):
        ids, vectors = index.vectors()
        index = EvidenceIndex.build(ids, vectors, model_name=index.model_name,
                                    exact_threshold=index.exact_threshold,
                                    ef_search=index.ef_search)  # fmt: skip
        rebuilt = True
    return IndexUpdate(index, len(new), removed, rebuilt)


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
