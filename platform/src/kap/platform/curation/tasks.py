"""The curation task of the Celery queue `default`: freeze a dataset for a client without write
credentials (the explorer, which connects as the read-only role).

    app.send_task("kap.curation.create_dataset", args=["search-correct", "SELECT ..."])

Redelivery is safe: the dataset's idempotency key is the Celery task id, which a redelivered
message keeps, so the second delivery returns the first one's dataset instead of a new version.
A refused query or an empty selection fails the task with its reason (no retry: it would fail
the same way). Its time limit is the worker's `KAP_TASK_TIME_LIMIT`, which the queue checks
against the broker's visibility timeout; the selection itself stops after 300 s.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from kap.platform.queue import app
from kap.platform.settings import Settings


@functools.cache
def _engines() -> tuple[sa.Engine, sa.Engine]:
    # Built lazily in the worker's child process (never inherited across the fork).
    from kap.platform.curation.access import curator_engine
    from kap.platform.db.session import make_engine

    settings = Settings()
    return make_engine(settings.resolved_database_url(), pool_size=2), curator_engine(settings)


@app.task(name="kap.curation.create_dataset", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def create_dataset_task(self: Any, name: str, sql: str) -> dict[str, Any]:
    """Freeze what `sql` selects as the next version of `name`; returns the dataset's facts."""
    from kap.platform.curation.datasets import create_dataset

    engine, curator = _engines()
    info = create_dataset(engine, curator, name, sql, idempotency_key=f"celery:{self.request.id}")
    return info.as_dict()
