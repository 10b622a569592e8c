"""Frozen dataset snapshots from the trajectory store, as conversations the trainers read.

    snapshot = load_snapshot(engine, "search-v1@2")   # or a dataset id, or a name (newest)
    train_sft(config, snapshot.conversations, recorder)

A snapshot is a `datasets` row with `frozen` set and its `dataset_items` in position order, each
naming a trajectory. Only frozen datasets are read: a training run records the dataset id and
its `content_hash`, which proves the exact trajectories it saw, so reading a dataset that can
still change would make that proof worthless.

A trajectory's conversation is the export record of `kap.platform.curation.conversations`
(its `messages` and `tools`, or rebuilt from its `steps`), the same one `kap dataset export`
writes; its domain is its task's, its id the trajectory id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from kap.platform.curation.conversations import records
from kap.platform.curation.datasets import find_dataset
from kap.platform.db.models import Dataset, DatasetItem
from kap.platform.errors import CurationError
from kap.training.chat import Conversation, validate_messages
from kap.training.errors import TrainingError


class DatasetError(TrainingError):
    """A dataset is unknown, not frozen, or one of its trajectories cannot become a conversation."""


@dataclass(frozen=True)
class Snapshot:
    """A frozen dataset, read whole."""

    id: uuid.UUID
    name: str
    version: int
    content_hash: str
    conversations: list[Conversation]


def _find(session: Session, ref: str | uuid.UUID) -> Dataset:
    """By id, by `name@version`, or by name (its newest frozen version)."""
    try:
        found = find_dataset(session, ref, newest_frozen=True)
    except CurationError as exc:
        raise DatasetError(str(exc)) from None
    if found is None:
        raise DatasetError(f"no dataset {str(ref)!r} (give an id, a name, or name@version)")
    if not found.frozen or found.content_hash is None:
        raise DatasetError(
            f"dataset {found.name}@{found.version} is not frozen: only frozen snapshots "
            "are trained on (their content hash is what the run records)"
        )
    return found


def _conversation(record: dict[str, Any]) -> Conversation:
    try:
        validate_messages(record["messages"], record["tools"])
    except TrainingError as exc:
        raise DatasetError(f"trajectory {record['id']}: {exc}") from exc
    return Conversation(
        messages=record["messages"], tools=record["tools"], domain=record["domain"], id=record["id"]
    )


def load_snapshot(engine: sa.Engine, ref: str | uuid.UUID) -> Snapshot:
    """The conversations of a frozen dataset, in item order (one query for all their steps)."""
    with Session(engine) as session:
        dataset = _find(session, ref)
        ids = list(
            session.scalars(
                sa.select(DatasetItem.trajectory_id)
                .where(DatasetItem.dataset_id == dataset.id)
                .order_by(DatasetItem.position)
            )
        )
        try:
            conversations = [_conversation(record) for record in records(session, ids)]
        except CurationError as exc:
            raise DatasetError(f"dataset {dataset.name}@{dataset.version}: {exc}") from exc
        if len(conversations) != dataset.row_count:
            raise DatasetError(
                f"dataset {dataset.name}@{dataset.version} records {dataset.row_count} items "
                f"but {len(conversations)} are stored"
            )
        assert dataset.content_hash is not None  # checked by _find
        return Snapshot(
            dataset.id, dataset.name, dataset.version, dataset.content_hash, conversations
        )
