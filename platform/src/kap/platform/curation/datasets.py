"""Datasets: a curation query's trajectories frozen as a versioned, immutable, hashed snapshot.

    info = create_dataset(engine, curator, "search-correct",
                          "SELECT trajectory_id FROM curation.trajectory_summary WHERE correct")
    export_dataset(engine, "search-correct", None, "jsonl", Path("train.jsonl"))

The selection runs as the read-only role (`run_query`), so a dataset's SQL can read only what
curation may read; the snapshot is then written by the owner in one transaction: the dataset
row (next version of the name, under an advisory lock), one item per trajectory in the query's
order (duplicates keep their first place) with the sha256 of its conversation, and the freeze
with the content hash over the ordered item hashes. From then on the database refuses any change
to it (migration 0006), so the hash a training run records names exactly what it trained on.

Export records are training-ready conversations (`conversations.record_of`): OpenAI-style
messages with tool calls, the tools shown, the domain label, and the ids back to trajectory,
task, campaign and dataset item. JSONL is what `kap train sft --set data=...` reads; Parquet
holds the same columns, messages and tools as JSON text (their shapes vary per tool).
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from kap.platform.curation.conversations import content_hash, item_hash, records
from kap.platform.curation.query import run_query
from kap.platform.db.models import Dataset, DatasetItem
from kap.platform.errors import CurationError

Format = Literal["jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "parquet")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_ITEMS = 1_000_000  # trajectories one dataset may hold (the selection's row cap)
SELECT_TIMEOUT_S = 300.0
PARQUET_ROWS = 512  # records per Parquet row group (bounded memory)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset row, as `kap dataset list|show` and the explorer show it."""

    id: uuid.UUID
    name: str
    version: int
    sql: str
    row_count: int
    content_hash: str | None
    frozen: bool
    created_at: datetime
    frozen_at: datetime | None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "version": self.version,
            "row_count": self.row_count,
            "content_hash": self.content_hash,
            "frozen": self.frozen,
            "created_at": self.created_at.isoformat(),
            "frozen_at": self.frozen_at.isoformat() if self.frozen_at else None,
            "sql": self.sql,
        }


def _info(row: Dataset) -> DatasetInfo:
    return DatasetInfo(
        row.id, row.name, row.version, row.sql, row.row_count, row.content_hash, row.frozen,
        row.created_at, row.frozen_at,
    )  # fmt: skip


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise CurationError(
            f"dataset name {name!r}: use letters, digits, '.', '_' or '-' (up to 128), "
            "starting with a letter or digit ('@' and '#' mark versions and items)"
        )
    return name


def _selected_ids(curator: sa.Engine, sql: str) -> list[uuid.UUID]:
    """The trajectory ids the query selects, in its order, first occurrence kept."""
    result = run_query(curator, sql, max_rows=MAX_ITEMS, timeout_s=SELECT_TIMEOUT_S)
    if result.truncated:
        raise CurationError(f"the query selects more than {MAX_ITEMS:,} trajectories")
    if "trajectory_id" in result.columns:
        column = result.columns.index("trajectory_id")
    elif len(result.columns) == 1:
        column = 0
    else:
        raise CurationError(
            f"the query returns columns {', '.join(result.columns)}: select a `trajectory_id` "
            "column (or exactly one column of trajectory ids)"
        )
    ids: dict[uuid.UUID, None] = {}
    for row in result.rows:
        value = row[column]
        try:
            ids.setdefault(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
        except ValueError:
            raise CurationError(f"not a trajectory id: {value!r}") from None
    if not ids:
        raise CurationError("the query selects no trajectories: nothing to freeze")
    return list(ids)


def create_dataset(
    engine: sa.Engine,
    curator: sa.Engine,
    name: str,
    sql: str,
    *,
    idempotency_key: str | None = None,
) -> DatasetInfo:
    """Freeze the trajectories `sql` selects (run as `curator`) as the next version of `name`.

    With `idempotency_key`, a second call with the same key returns the first call's dataset.
    """
    check_name(name)
    if idempotency_key is not None:  # a redelivery need not run the selection again
        with Session(engine) as session:
            if made := _by_key(session, idempotency_key):
                return made
    ids = _selected_ids(curator, sql)
    with Session(engine) as session, session.begin():
        # Versions of one name are numbered one at a time (two creators never collide).
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(name))))
        if idempotency_key is not None and (made := _by_key(session, idempotency_key)):
            return made
        latest = session.scalar(sa.select(sa.func.max(Dataset.version)).where(Dataset.name == name))
        dataset = Dataset(
            name=name, version=(latest or 0) + 1, sql=sql.strip(), row_count=len(ids),
            idempotency_key=idempotency_key,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
        hashes: list[str] = []
        rows: list[dict[str, Any]] = []
        for position, record in enumerate(records(session, ids)):
            hashes.append(item_hash(record))
            rows.append(
                {"dataset_id": dataset_id, "position": position,
                 "trajectory_id": uuid.UUID(record["trajectory_id"]), "item_hash": hashes[-1]}
            )  # fmt: skip
            if len(rows) >= 1000:
                session.execute(sa.insert(DatasetItem), rows)
                rows.clear()
        if rows:
            session.execute(sa.insert(DatasetItem), rows)
        session.execute(
            sa.update(Dataset)
            .where(Dataset.id == dataset_id)
            .values(frozen=True, content_hash=content_hash(hashes), frozen_at=sa.func.now())
        )
        frozen = session.get(Dataset, dataset_id, populate_existing=True)
        assert frozen is not None
        return _info(frozen)


def _by_key(session: Session, key: str) -> DatasetInfo | None:
    query = sa.select(Dataset).where(Dataset.idempotency_key == key, Dataset.frozen)
    row = session.scalars(query).first()
    return None if row is None else _info(row)


def list_datasets(engine: sa.Engine) -> list[DatasetInfo]:
    """Every dataset, newest version of each name first within the name."""
    with Session(engine) as session:
        query = sa.select(Dataset).order_by(Dataset.name, Dataset.version.desc())
        return [_info(row) for row in session.scalars(query)]


def find_dataset(
    session: Session,
    ref: str | uuid.UUID,
    version: int | None = None,
    *,
    newest_frozen: bool = False,
) -> Dataset | None:
    """By id, by `NAME@VERSION` (or `NAME` and `version`), or by name: its newest version, or
    its newest frozen one with `newest_frozen`. None when there is no such dataset."""
    if isinstance(ref, uuid.UUID):
        return session.get(Dataset, ref)
    try:
        return session.get(Dataset, uuid.UUID(ref))
    except ValueError:
        pass
    name = ref
    if version is None and "@" in ref:
        name, _, text = ref.partition("@")
        if not text.isdigit():
            raise CurationError(f"dataset {ref!r}: the version must be a number")
        version = int(text)
    query = sa.select(Dataset).where(Dataset.name == name)
    if version is not None:
        query = query.where(Dataset.version == version)
    elif newest_frozen:
        query = query.where(Dataset.frozen)
    return session.scalars(query.order_by(Dataset.version.desc()).limit(1)).first()


def get_dataset(engine: sa.Engine, name: str, version: int | None = None) -> DatasetInfo:
    """`name` at `version`, or its newest version; accepts `NAME@V` (or an id) as the name."""
    with Session(engine) as session:
        row = find_dataset(session, name, version)
        if row is None:
            shown = name if version is None else f"{name}@{version}"
            known = session.scalars(sa.select(Dataset.name).distinct().limit(10)).all()
            hint = f" (datasets: {', '.join(sorted(known))})" if known else " (there are none yet)"
            raise CurationError(f"no dataset {shown}{hint}")
        return _info(row)


def _items(engine: sa.Engine, dataset: DatasetInfo) -> list[tuple[uuid.UUID, str]]:
    """(trajectory id, item hash) of every item, in position order."""
    with Session(engine) as session:
        query = (
            sa.select(DatasetItem.trajectory_id, DatasetItem.item_hash)
            .where(DatasetItem.dataset_id == dataset.id)
            .order_by(DatasetItem.position)
        )
        return [(trajectory_id, hashed) for trajectory_id, hashed in session.execute(query)]


def _records(
    engine: sa.Engine, dataset: DatasetInfo, ids: list[uuid.UUID]
) -> Iterator[dict[str, Any]]:
    with Session(engine) as session:
        for position, record in enumerate(records(session, ids)):
            yield {**record, "dataset": dataset.ref, "position": position}


def dataset_records(engine: sa.Engine, dataset: DatasetInfo) -> Iterator[dict[str, Any]]:
    """The dataset's export records in item order, with the dataset's ref and positions."""
    return _records(
        engine, dataset, [trajectory_id for trajectory_id, _ in _items(engine, dataset)]
    )


def verify(engine: sa.Engine, dataset: DatasetInfo) -> list[int]:
    """Positions whose stored conversation no longer hashes to the frozen item hash."""
    items = _items(engine, dataset)
    now = [item_hash(r) for r in _records(engine, dataset, [i for i, _ in items])]
    changed = [
        i for i, ((_, stored), new) in enumerate(zip(items, now, strict=True)) if stored != new
    ]
    if not changed and content_hash(now) != dataset.content_hash:
        changed = list(range(len(now)))  # the items agree but the list does not
    return changed


# ---- export ----


def _write_jsonl(rows: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    n = 0
    for n, record in enumerate(rows, start=1):  # noqa: B007 (n is the count afterwards)
        out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return n


def _write_parquet(rows: Iterator[dict[str, Any]], out: IO[bytes], dataset: DatasetInfo) -> int:
    import pyarrow as pa  # lazy: only exports need it
    import pyarrow.parquet as pq

    schema = pa.schema(
        [(name, pa.string()) for name in
         ("id", "dataset", "domain", "trajectory_id", "task_id", "campaign_id", "messages",
          "tools")] + [("position", pa.int64())],
        metadata={"kap.dataset": dataset.ref, "kap.content_hash": dataset.content_hash or ""},
    )  # fmt: skip
    n = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            batch.clear()

        for record in rows:
            batch.append(
                {**record, "messages": json.dumps(record["messages"], ensure_ascii=False),
                 "tools": None if record["tools"] is None else json.dumps(record["tools"])}
            )  # fmt: skip
            n += 1
            if len(batch) >= PARQUET_ROWS:
                flush()
        if batch or n == 0:
            flush()
    return n


def write_export(engine: sa.Engine, dataset: DatasetInfo, fmt: Format, out: IO[bytes]) -> int:
    """Write the dataset's records to `out` as `fmt`; returns how many."""
    if fmt not in FORMATS:
        raise CurationError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not dataset.frozen:
        raise CurationError(f"dataset {dataset.ref} is not frozen: only snapshots are exported")
    rows = dataset_records(engine, dataset)
    return _write_jsonl(rows, out) if fmt == "jsonl" else _write_parquet(rows, out, dataset)


def export_dataset(
    engine: sa.Engine, name: str, version: int | None, fmt: Format, path: Path
) -> tuple[DatasetInfo, int]:
    """Write a dataset to `path` (whole or not at all: a temporary file renamed into place)."""
    dataset = get_dataset(engine, name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            n = write_export(engine, dataset, fmt, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return dataset, n


def export_bytes(engine: sa.Engine, name: str, version: int | None, fmt: Format) -> bytes:
    """The export in memory (the explorer's download button)."""
    buffer = io.BytesIO()
    write_export(engine, get_dataset(engine, name, version), fmt, buffer)
    return buffer.getvalue()
