"""Incremental evidence-index updates against the real Neo4j and the packaged embedder."""

from __future__ import annotations

import neo4j
import pytest

from kap.graphstore.embed import Embedder
from kap.graphstore.evidence import EvidenceIndex, IndexKind
from kap.graphstore.indexing import build_index, update_index
from kap.graphstore.ingest import Ingestor, delete_document
from kap.graphstore.records import LoadResult, SourceDocument
from kap.platform.errors import GraphStoreError

pytestmark = pytest.mark.integration

PAGES = [
    SourceDocument(f"Page {i}", f"Page {i} is about topic number {i} and nothing else.", f"t#{i}")
    for i in range(8)
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def chunk_ids(driver: neo4j.Driver, domain: str) -> set[str]:
    records = driver.execute_query("MATCH (c:Chunk {domain: $d}) RETURN c.id AS id", d=domain)
    return {r["id"] for r in records.records}


def test_update_embeds_new_chunks_and_drops_deleted_ones(
    driver: neo4j.Driver, domain: str, embedder: Embedder
) -> None:
    ingestor = Ingestor(driver, domain)
    ingestor.run(LoadResult(documents=PAGES[:4]))
    first = build_index(driver, domain, embedder)
    stored_before = dict(zip(*first.vectors(), strict=True))

    ingestor.run(LoadResult(documents=PAGES[4:6]))
    doc = driver.execute_query(
        "MATCH (d:Document {domain: $d, title: 'Page 0'}) RETURN d.id AS id", d=domain
    ).records[0]["id"]
    delete_document(driver, doc, domain=domain)
    update = update_index(driver, domain, embedder, first)

    assert (update.added, update.removed, update.rebuilt) == (2, 1, False)
    assert set(update.index.ids()) == chunk_ids(driver, domain)
    ids, vectors = update.index.vectors()
    for cid, vector in zip(ids, vectors, strict=True):  # old vectors were kept, not re-embedded
        if cid in stored_before:
            assert (vector == stored_before[cid]).all()
    top = update.index.search(embedder.encode(["Page 5 is about topic number 5"]), 1)[0][0][0]
    assert top in chunk_ids(driver, domain) - set(stored_before)


def test_a_flat_index_that_outgrows_its_threshold_becomes_hnsw(
    driver: neo4j.Driver, domain: str, embedder: Embedder
) -> None:
    ingestor = Ingestor(driver, domain)
    ingestor.run(LoadResult(documents=PAGES[:3]))
    rows = driver.execute_query(
        "MATCH (c:Chunk {domain: $d}) RETURN c.id AS id, c.text AS text ORDER BY c.id", d=domain
    ).records
    small = EvidenceIndex.build([r["id"] for r in rows], embedder.encode([r["text"] for r in rows]),
                                model_name=embedder.name, exact_threshold=5)  # fmt: skip
    assert small.kind is IndexKind.FLAT
    ingestor.run(LoadResult(documents=PAGES[3:]))
    update = update_index(driver, domain, embedder, small)
    assert update.rebuilt and update.index.kind is IndexKind.HNSW
    assert set(update.index.ids()) == chunk_ids(driver, domain)


def test_an_index_of_another_model_is_refused(
    driver: neo4j.Driver, domain: str, embedder: Embedder
) -> None:
    Ingestor(driver, domain).run(LoadResult(documents=PAGES[:2]))
    ids = sorted(chunk_ids(driver, domain))
    other = EvidenceIndex.build(ids, embedder.encode(["x"] * len(ids)), model_name="other-model")
    with pytest.raises(GraphStoreError, match="--rebuild"):
        update_index(driver, domain, embedder, other)
