"""EvidenceIndex against a brute-force numpy top-k on random unit vectors; persistence; removal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kap.graphstore.evidence import MANIFEST, EvidenceIndex, IndexKind
from kap.platform.errors import GraphStoreError

MODEL = "test/model"


def unit_vectors(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    unit: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def chunk_ids(n: int, start: int = 0) -> list[str]:
    return [f"chunk:{i}" for i in range(start, start + n)]


def brute_force(
    data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    scores = queries @ data.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def hit_ids(hits: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[i for i, _ in row] for row in hits]


@pytest.fixture(scope="module")
def data() -> npt.NDArray[np.float32]:
    return unit_vectors(2_000, 64, seed=0)


@pytest.fixture(scope="module")
def queries() -> npt.NDArray[np.float32]:
    return unit_vectors(50, 64, seed=1)


def test_exact_matches_brute_force(
    data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]
) -> None:
    index = EvidenceIndex.build(chunk_ids(len(data)), data, model_name=MODEL)
    assert index.kind is IndexKind.FLAT
    hits = index.search(queries, 10)
    scores, order = brute_force(data, queries, 10)
    assert hit_ids(hits) == [[f"chunk:{j}" for j in row] for row in order.tolist()]
    got = np.array([[s for _, s in row] for row in hits])
    np.testing.assert_allclose(got, scores, atol=1e-5)


def test_hnsw_recall_at_10() -> None:
    data, queries = unit_vectors(5_000, 64, seed=2), unit_vectors(200, 64, seed=3)
    index = EvidenceIndex.build(chunk_ids(len(data)), data, model_name=MODEL, exact_threshold=1_000)
    assert index.kind is IndexKind.HNSW
    _, order = brute_force(data, queries, 10)
    found = hit_ids(index.search(queries, 10))
    recall = np.mean(
        [
            len(set(row) & {f"chunk:{j}" for j in truth}) / 10
            for row, truth in zip(found, order.tolist(), strict=True)
        ]
    )
    assert recall >= 0.95, recall


def test_add_keeps_kind(data: npt.NDArray[np.float32]) -> None:
    index = EvidenceIndex.build(chunk_ids(10), data[:10], model_name=MODEL, exact_threshold=50)
    index.add(chunk_ids(100, start=10), data[10:110])
    assert index.kind is IndexKind.FLAT and len(index) == 110
    hnsw = EvidenceIndex.build(chunk_ids(60), data[:60], model_name=MODEL, exact_threshold=50)
    hnsw.add(chunk_ids(5, start=60), data[60:65])
    assert hnsw.kind is IndexKind.HNSW and len(hnsw) == 65


@pytest.mark.parametrize("threshold", [50_000, 1], ids=["flat", "hnsw"])
def test_save_load_round_trip(
    tmp_path: Path,
    data: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    threshold: int,
) -> None:
    index = EvidenceIndex.build(
        chunk_ids(500), data[:500], model_name=MODEL, exact_threshold=threshold, ef_search=64
    )
    index.remove(["chunk:3", "chunk:7"])
    index.save(tmp_path)
    loaded = EvidenceIndex.load(tmp_path, expect_model=MODEL, expect_dim=64)
    assert (loaded.kind, loaded.ef_search, len(loaded)) == (index.kind, 64, 498)
    assert loaded.ids() == index.ids() and loaded.tombstones == index.tombstones
    assert loaded.search(queries, 10) == index.search(queries, 10)
    # Labels continue after the loaded ones, so later adds stay distinct.
    loaded.add(["new"], data[600:601])
    assert loaded.search(data[600], 1)[0][0][0] == "new"


def test_corrupt_index_file_is_refused(tmp_path: Path, data: npt.NDArray[np.float32]) -> None:
    EvidenceIndex.build(chunk_ids(100), data[:100], model_name=MODEL).save(tmp_path)
    (index_file,) = tmp_path.glob("index-*.faiss")
    raw = bytearray(index_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    index_file.write_bytes(bytes(raw))
    with pytest.raises(GraphStoreError, match=index_file.name):
        EvidenceIndex.load(tmp_path)


def test_manifest_count_mismatch_is_refused(tmp_path: Path, data: npt.NDArray[np.float32]) -> None:
    EvidenceIndex.build(chunk_ids(100), data[:100], model_name=MODEL).save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["count"], manifest["ids"] = 99, manifest["ids"][:99]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(GraphStoreError, match="100 vectors, manifest count 99"):
        EvidenceIndex.load(tmp_path)


def test_other_model_is_detected(tmp_path: Path, data: npt.NDArray[np.float32]) -> None:
    EvidenceIndex.build(chunk_ids(10), data[:10], model_name=MODEL).save(tmp_path)
    with pytest.raises(GraphStoreError, match=r"'test/model' \(dim 64\).*'other' \(dim 768\)"):
        EvidenceIndex.load(tmp_path, expect_model="other", expect_dim=768)
    with pytest.raises(GraphStoreError, match="dim 384"):
        EvidenceIndex.load(tmp_path, expect_dim=384)


def test_crash_before_manifest_keeps_previous_index(
    tmp_path: Path, data: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    EvidenceIndex.build(chunk_ids(10), data[:10], model_name=MODEL).save(tmp_path)
    real_replace = os.replace

    def crash_on_manifest(src: str, dst: str | Path) -> None:
        if Path(dst).name == MANIFEST:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    bigger = EvidenceIndex.build(chunk_ids(20), data[:20], model_name=MODEL)
    with pytest.raises(OSError, match="simulated crash"):
        bigger.save(tmp_path)
    monkeypatch.undo()
    assert len(EvidenceIndex.load(tmp_path)) == 10
    assert not list(tmp_path.glob("*.tmp"))
    bigger.save(tmp_path)  # a later save succeeds and drops the orphaned index file
    assert len(EvidenceIndex.load(tmp_path)) == 20
    assert len(list(tmp_path.glob("index-*.faiss"))) == 1


def test_wrong_dim_and_duplicates_refused(data: npt.NDArray[np.float32]) -> None:
    index = EvidenceIndex.build(chunk_ids(10), data[:10], model_name=MODEL)
    with pytest.raises(GraphStoreError, match=r"expected \(n, 64\)"):
        index.add(["x"], np.ones((1, 32), dtype=np.float32))
    with pytest.raises(GraphStoreError, match=r"expected \(n, 64\)"):
        index.search(np.ones((1, 32), dtype=np.float32), 3)
    with pytest.raises(GraphStoreError, match=r"'chunk:1' \(already indexed\)"):
        index.add(["chunk:1"], data[20:21])
    with pytest.raises(GraphStoreError, match=r"'a' \(twice in this batch\)"):
        index.add(["a", "a"], data[20:22])
    with pytest.raises(GraphStoreError, match="2 ids for 1 vectors"):
        index.add(["a", "b"], data[20:21])
    with pytest.raises(GraphStoreError, match="NaN"):
        index.add(["nan"], np.full((1, 64), np.nan, dtype=np.float32))
    assert len(index) == 10


@pytest.mark.parametrize("threshold", [50_000, 1], ids=["flat", "hnsw"])
def test_remove_hides_ids(data: npt.NDArray[np.float32], threshold: int) -> None:
    index = EvidenceIndex.build(
        chunk_ids(300), data[:300], model_name=MODEL, exact_threshold=threshold
    )
    query = data[:5]  # each row's best hit is itself
    gone = [row[0][0] for row in index.search(query, 1)]
    assert gone == chunk_ids(5)
    assert index.remove(gone) == 5
    assert len(index) == 295 and not set(gone) & set(index.ids())
    assert index.tombstones == (5 if index.kind is IndexKind.HNSW else 0)
    assert index.ntotal == (300 if index.kind is IndexKind.HNSW else 295)
    hits = index.search(query, 10)
    assert all(len(row) == 10 for row in hits)
    assert not set(gone) & {i for row in hit_ids(hits) for i in row}
    with pytest.raises(GraphStoreError, match="not in the index"):
        index.remove(["chunk:0"])
    assert index.remove(["chunk:0", "chunk:5"], missing_ok=True) == 1
    index.add(["chunk:0"], data[0:1])  # a removed id can come back
    assert index.search(data[0], 1)[0][0][0] == "chunk:0"


def test_compact_drops_tombstones(data: npt.NDArray[np.float32]) -> None:
    index = EvidenceIndex.build(chunk_ids(300), data[:300], model_name=MODEL, exact_threshold=1)
    index.remove(chunk_ids(100))
    compact = index.compact()
    assert compact.kind is IndexKind.HNSW
    assert (compact.ntotal, compact.tombstones, compact.ids()) == (200, 0, index.ids())
    ids, vectors = compact.vectors()
    np.testing.assert_array_equal(vectors, data[100:300])
    assert ids == chunk_ids(200, start=100)


@pytest.mark.parametrize("threshold", [50_000, 1], ids=["flat", "hnsw"])
def test_k_larger_than_size(data: npt.NDArray[np.float32], threshold: int) -> None:
    index = EvidenceIndex.build(chunk_ids(5), data[:5], model_name=MODEL, exact_threshold=threshold)
    hits = index.search(data[:2], 50)
    assert [sorted(row) for row in hit_ids(hits)] == [chunk_ids(5)] * 2
    index.remove(["chunk:4"])
    assert all(len(row) == 4 for row in index.search(data[:2], 50))


def test_empty_index(tmp_path: Path, queries: npt.NDArray[np.float32]) -> None:
    index = EvidenceIndex(64, MODEL)
    assert index.kind is None and len(index) == 0
    assert index.search(queries[:3], 5) == [[], [], []]
    index.save(tmp_path)
    loaded = EvidenceIndex.load(tmp_path)
    assert loaded.kind is None and loaded.ids() == []
    loaded.add(chunk_ids(3), queries[:3])  # the first batch still chooses the kind
    assert loaded.kind is IndexKind.FLAT
