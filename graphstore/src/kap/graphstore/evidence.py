"""The FAISS evidence index of one domain: chunk embeddings searchable by inner product.

Vectors are expected L2-normalized (as `Embedder.encode` returns them), so the inner-product
scores are cosine similarities. Two kinds, chosen from the vector count when the first batch is
added (`build()`, or the first `add()` to a never-filled index) and kept by every later `add()`,
also after `remove()` has emptied it:

- `flat` below `exact_threshold` vectors: exact search, `IndexFlatIP` wrapped in `IndexIDMap2`
  so `remove()` really deletes vectors (`remove_ids`). On a machine with faiss-gpu, searches run
  on a GPU copy of the vectors; otherwise on the CPU.
- `hnsw` at or above it: approximate search, `IndexHNSWFlat` (inner product, M=32,
  efConstruction=200, `ef_search` settable). HNSW graphs cannot delete, so `remove()` records
  tombstones that `search()` filters out (fetching k + tombstones candidates); the vectors stay
  stored until `compact()` rebuilds the index from the live ones. Always on the CPU.

String ids (Neo4j Chunk ids) map to FAISS int64 labels. `save()` writes the FAISS file (named
by its checksum) and then `manifest.json` (format version, kind, dim, model name, count, metric,
ordered ids, tombstones, sha256 of the index file), each to a temporary file renamed into place;
the manifest rename is the commit point, so a crash mid-save leaves the previous index loadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

try:
    import faiss
except ImportError as exc:  # the faiss build is an extra: kap-graphstore[cpu] or [gpu]
    raise ImportError(
        "faiss is not installed: install kap-graphstore[cpu] (faiss-cpu) or kap-graphstore[gpu] "
        "(faiss-gpu-cu12), e.g. `uv sync --all-packages --extra cpu`"
    ) from exc
import numpy as np
import numpy.typing as npt

from kap.platform.errors import GraphStoreError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
METRIC = "inner_product"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
_INDEX_FILE = re.compile(r"index-[0-9a-f]{16}\.faiss")

Matrix = npt.NDArray[np.float32]
Hits = list[list[tuple[str, float]]]


class IndexKind(StrEnum):
    FLAT = "flat"
    HNSW = "hnsw"


class EvidenceIndex:
    """Chunk-id -> embedding index over FAISS; `add`, `remove`, `search`, `save`, `load`."""

    def __init__(
        self,
        dim: int,
        model_name: str,
        *,
        exact_threshold: int = 50_000,
        ef_search: int = 128,
    ) -> None:
        if dim < 1:
            raise GraphStoreError(f"embedding dimension must be positive, got {dim}")
        self.dim = dim
        self.model_name = model_name
        self.exact_threshold = exact_threshold
        self._ef_search = ef_search
        self._index: Any = None  # created by the first add, when the kind is known
        self._kind: IndexKind | None = None
        # label -> chunk id for every stored vector, in FAISS storage order (HNSW: label ==
        # position, tombstoned ones included); chunk id -> label for the live ones only.
        self._id_of: dict[int, str] = {}
        self._label_of: dict[str, int] = {}
        self._tombstones: set[int] = set()
        self._next_label = 0
        # Flat kind: what searches run on (the inner flat index, or its GPU copy) and the label
        # of each storage position; rebuilt after every add/remove.
        self._flat_view: tuple[Any, npt.NDArray[np.int64]] | None = None

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        vectors: npt.ArrayLike,
        *,
        model_name: str,
        exact_threshold: int = 50_000,
        ef_search: int = 128,
    ) -> EvidenceIndex:
        """An index over `vectors` (n, dim); flat if n < exact_threshold, else HNSW."""
        matrix = np.asarray(vectors)
        if matrix.ndim != 2:
            raise GraphStoreError(f"vectors must be a 2-D array, got shape {matrix.shape}")
        index = cls(
            int(matrix.shape[1]),
            model_name,
            exact_threshold=exact_threshold,
            ef_search=ef_search,
        )
        index.add(ids, matrix)
        return index

    # ---- properties ----

    @property
    def kind(self) -> IndexKind | None:
        """`flat` or `hnsw`; None until the first vectors are added."""
        return self._kind

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = value
        if self._kind is IndexKind.HNSW:
            self._index.hnsw.efSearch = value

    @property
    def tombstones(self) -> int:
        """Removed vectors still stored (HNSW only; flat removes for real)."""
        return len(self._tombstones)

    @property
    def ntotal(self) -> int:
        """Vectors stored by FAISS, tombstoned ones included."""
        return 0 if self._index is None else int(self._index.ntotal)

    def ids(self) -> list[str]:
        """The live chunk ids, oldest first."""
        return list(self._label_of)

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._label_of

    def __repr__(self) -> str:
        return (
            f"EvidenceIndex(kind={self._kind}, dim={self.dim}, model={self.model_name!r}, "
            f"live={len(self)}, tombstones={self.tombstones})"
        )

    # ---- writes ----

    def add(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Add vectors under new chunk ids; refuses duplicates and a wrong dimension."""
        matrix = self._matrix(vectors, "vectors")
        ids = _id_list(ids)
        if len(ids) != matrix.shape[0]:
            raise GraphStoreError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
        present = sorted(i for i in set(ids) if i in self._label_of)
        if repeated or present:
            named = [f"{i!r} (twice in this batch)" for i in repeated[:5]]
            named += [f"{i!r} (already indexed)" for i in present[:5]]
            raise GraphStoreError(f"duplicate chunk ids refused: {', '.join(named)}")
        if not ids:
            return
        if self._index is None:  # the first batch decides the kind; later ones keep it
            self._create(IndexKind.FLAT if len(ids) < self.exact_threshold else IndexKind.HNSW)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        if self._kind is IndexKind.FLAT:
            self._index.add_with_ids(matrix, labels)
        else:
            self._index.add(matrix)  # HNSW labels are positions: next_label == ntotal
        for label, chunk_id in zip(labels.tolist(), ids, strict=True):
            self._id_of[label] = chunk_id
            self._label_of[chunk_id] = label
        self._next_label += len(ids)
        self._flat_view = None

    def remove(self, ids: Iterable[str], *, missing_ok: bool = False) -> int:
        """Remove chunk ids (document deletion); returns how many were live.

        Flat: the vectors are deleted. HNSW: they are tombstoned and filtered at search time
        (see `tombstones`, `compact()`). Unknown ids raise unless `missing_ok`.
        """
        wanted = set(_id_list(ids))
        missing = sorted(wanted - self._label_of.keys())
        if missing and not missing_ok:
            raise GraphStoreError(f"cannot remove ids not in the index: {missing[:5]}")
        labels = [self._label_of.pop(i) for i in wanted if i in self._label_of]
        if not labels:
            return 0
        if self._kind is IndexKind.FLAT:
            self._index.remove_ids(np.asarray(labels, dtype=np.int64))
            for label in labels:
                del self._id_of[label]
        else:
            self._tombstones.update(labels)
        self._flat_view = None
        return len(labels)

    def vectors(self) -> tuple[list[str], Matrix]:
        """The live ids and their stored vectors, in storage order."""
        if self._index is None:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        storage = self._index if self._kind is IndexKind.HNSW else self._index.index
        stored: Matrix = storage.reconstruct_n(0, self.ntotal)
        # _id_of is in storage order, so its enumeration gives each label's position.
        live = [
            (p, i) for p, (lab, i) in enumerate(self._id_of.items()) if lab not in self._tombstones
        ]
        positions = [p for p, _ in live]
        return [i for _, i in live], np.ascontiguousarray(stored[positions])

    def compact(self) -> EvidenceIndex:
        """A new index of the same kind holding only the live vectors (drops tombstones)."""
        fresh = EvidenceIndex(
            self.dim,
            self.model_name,
            exact_threshold=self.exact_threshold,
            ef_search=self._ef_search,
        )
        ids, matrix = self.vectors()
        if self._kind is not None:
            fresh._create(self._kind)
        fresh.add(ids, matrix)
        return fresh

    # ---- search ----

    def search(self, query_vectors: npt.ArrayLike, k: int) -> Hits:
        """Top-k (chunk id, inner product) per query row, best first; fewer if fewer are live."""
        queries = self._matrix(query_vectors, "query vectors", allow_1d=True)
        if k < 1:
            raise GraphStoreError(f"k must be at least 1, got {k}")
        if len(self) == 0:
            return [[] for _ in range(queries.shape[0])]
        # Over-fetch by the tombstone count so k live hits survive the filter.
        fetch = min(k + len(self._tombstones), self.ntotal)
        scores, labels = self._search_raw(queries, fetch)
        hits: Hits = []
        for row_scores, row_labels in zip(scores.tolist(), labels.tolist(), strict=True):
            row = [
                (self._id_of[label], score)
                for score, label in zip(row_scores, row_labels, strict=True)
                if label >= 0 and label not in self._tombstones
            ]
            hits.append(row[:k])
        return hits

    def _search_raw(
        self, queries: Matrix, fetch: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self._kind is IndexKind.FLAT:
            # Search the inner flat storage and map positions to labels here: IndexIDMap2's own
            # search opens an OpenMP region per call, which costs milliseconds per single query
            # when the cores are shared (measured 20x slower at nq=1 with 2 threads).
            if self._flat_view is None:
                flat = faiss.downcast_index(self._index.index)
                labels_of_position = faiss.vector_to_array(self._index.id_map)
                self._flat_view = (_on_gpu(flat) or flat, labels_of_position)
            storage, labels_of_position = self._flat_view
            scores, positions = storage.search(queries, fetch)
            labels = np.where(positions >= 0, labels_of_position[positions], -1)
            return scores, labels
        scores, labels = self._index.search(queries, fetch)
        return scores, labels

    # ---- persistence ----

    def save(self, directory: Path) -> Path:
        """Write the index file and manifest atomically into `directory`; returns the manifest."""
        directory.mkdir(parents=True, exist_ok=True)
        # A never-filled index is stored as an empty flat file with kind null (still unchosen).
        index = self._index if self._index is not None else _empty_flat(self.dim)
        data = faiss.serialize_index(index).tobytes()
        digest = hashlib.sha256(data).hexdigest()
        index_name = f"index-{digest[:16]}.faiss"
        _atomic_write(directory / index_name, data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": None if self._kind is None else str(self._kind),
            "dim": self.dim,
            "model_name": self.model_name,
            "metric": METRIC,
            "count": self.ntotal,
            "live": len(self),
            "exact_threshold": self.exact_threshold,
            "ef_search": self._ef_search,
            "index_file": index_name,
            "index_sha256": digest,
            "ids": list(self._id_of.values()),  # storage order; HNSW: position i -> ids[i]
            "tombstones": sorted(self._tombstones),  # HNSW positions
        }
        manifest_path = directory / MANIFEST
        _atomic_write(manifest_path, json.dumps(manifest, indent=1).encode("utf-8"))
        for stale in directory.glob("index-*.faiss"):  # earlier saves, no longer referenced
            if stale.name != index_name:
                stale.unlink(missing_ok=True)
        return manifest_path

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        expect_model: str | None = None,
        expect_dim: int | None = None,
    ) -> EvidenceIndex:
        """Read an index saved by `save`, verifying checksum, count and the expected model."""
        manifest_path = directory / MANIFEST
        manifest = _read_manifest(manifest_path)
        model, dim = manifest["model_name"], manifest["dim"]
        if (expect_model is not None and expect_model != model) or (
            expect_dim is not None and expect_dim != dim
        ):
            raise GraphStoreError(
                f"evidence index {directory} was built with model {model!r} (dim {dim}), "
                f"but model {expect_model!r} (dim {expect_dim}) is expected; re-embed the domain"
            )
        index = _read_index(directory, manifest)
        self = cls(
            dim,
            model,
            exact_threshold=manifest["exact_threshold"],
            ef_search=manifest["ef_search"],
        )
        if manifest["kind"] is not None:
            kind = IndexKind(manifest["kind"])
            self._restore(index, kind, manifest["ids"], manifest["tombstones"])
        return self

    # ---- internals ----

    def _create(self, kind: IndexKind) -> None:
        if kind is IndexKind.FLAT:
            self._index = _empty_flat(self.dim)
        else:
            self._index = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self._index.hnsw.efSearch = self._ef_search
        self._kind = kind
        self._id_of, self._label_of, self._tombstones = {}, {}, set()
        self._next_label, self._flat_view = 0, None

    def _restore(self, index: Any, kind: IndexKind, ids: list[str], tombstones: list[int]) -> None:
        self._index, self._kind, self._flat_view = index, kind, None
        if kind is IndexKind.FLAT:
            labels = faiss.vector_to_array(index.id_map).tolist()
        else:
            labels = list(range(len(ids)))
            index.hnsw.efSearch = self._ef_search
        self._id_of = dict(zip(labels, ids, strict=True))
        self._tombstones = set(tombstones)
        self._label_of = {i: lab for lab, i in self._id_of.items() if lab not in self._tombstones}
        self._next_label = max(labels, default=-1) + 1

    def _matrix(self, vectors: npt.ArrayLike, what: str, *, allow_1d: bool = False) -> Matrix:
        matrix = np.asarray(vectors)
        if allow_1d and matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise GraphStoreError(
                f"{what} have shape {matrix.shape}, expected (n, {self.dim}) for this index"
            )
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)  # FAISS takes C-order float32
        if not np.isfinite(matrix).all():
            raise GraphStoreError(f"{what} contain NaN or infinite values")
        return matrix


def _empty_flat(dim: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _id_list(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str):  # a lone string would otherwise be read as its characters
        raise TypeError("expected a sequence of chunk ids, not one string")
    return list(ids)


def _on_gpu(flat: Any) -> Any | None:
    """A copy of a flat index on all GPUs, or None without faiss-gpu or a visible GPU.

    Only the inner IndexFlatIP goes to the GPU (the id map stays on the host), so the copy
    needs no IndexIDMap2 support from the GPU cloner. HNSW indices never come here.
    """
    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return None
    return faiss.index_cpu_to_all_gpus(flat)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_MANIFEST_KEYS = (
    "format_version",
    "kind",
    "dim",
    "model_name",
    "metric",
    "count",
    "exact_threshold",
    "ef_search",
    "index_file",
    "index_sha256",
    "ids",
    "tombstones",
)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GraphStoreError(f"no evidence index manifest at {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GraphStoreError(f"evidence index manifest {path} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise GraphStoreError(f"evidence index manifest {path} is not a JSON object")
    if missing := [k for k in _MANIFEST_KEYS if k not in manifest]:
        raise GraphStoreError(f"evidence index manifest {path} lacks keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise GraphStoreError(
            f"evidence index manifest {path} has format {manifest['format_version']}, "
            f"this kap reads format {FORMAT_VERSION}"
        )
    if manifest["metric"] != METRIC or manifest["kind"] not in {*IndexKind, None}:
        raise GraphStoreError(
            f"evidence index manifest {path}: unknown metric {manifest['metric']!r} "
            f"or kind {manifest['kind']!r}"
        )
    if not _INDEX_FILE.fullmatch(str(manifest["index_file"])):  # never a path out of the folder
        raise GraphStoreError(f"evidence index manifest {path}: bad index_file name")
    return manifest


def _read_index(directory: Path, manifest: dict[str, Any]) -> Any:
    """Deserialize the index file after checking its checksum and its shape against the manifest."""
    path = directory / manifest["index_file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GraphStoreError(f"evidence index file {path} is unreadable: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != manifest["index_sha256"]:
        raise GraphStoreError(
            f"evidence index file {path} is corrupt: its sha256 differs from the manifest's"
        )
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise GraphStoreError(f"evidence index file {path} cannot be read by FAISS: {exc}") from exc
    hnsw = manifest["kind"] == IndexKind.HNSW
    expected_type = faiss.IndexHNSWFlat if hnsw else faiss.IndexIDMap2
    problems = []
    if not isinstance(index, expected_type):
        problems.append(f"type {type(index).__name__} for kind {manifest['kind']}")
    if index.d != manifest["dim"] or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problems.append(f"dim {index.d} / metric {index.metric_type}")
    if not index.ntotal == manifest["count"] == len(manifest["ids"]):
        problems.append(
            f"{index.ntotal} vectors, manifest count {manifest['count']}, "
            f"{len(manifest['ids'])} ids"
        )
    if problems:
        raise GraphStoreError(
            f"evidence index file {path} does not match its manifest: {'; '.join(problems)}"
        )
    return index
