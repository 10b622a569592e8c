"""Celery tasks of the `train` queue, consumed by GPU nodes: `kap worker --queues train`.

    from kap.training.tasks import run_stage_task
    run_stage_task.delay("sft", "configs/train/sft-tiny.yaml", dataset="search-v1@2")

Every `kap.training.*` task is routed to the `train` queue (`kap.platform.queue`'s routes).
One task runs one stage from its config file (paths as the worker sees them) on one worker
process; the worker is the entry point, so it builds the settings and its own engine after the
fork. Its metrics stream to `run_metrics` while it runs (every few steps).

Redelivery (the worker died: `acks_late` + `task_reject_on_worker_lost`) is safe: the run row's
idempotency key defaults to the Celery task id, which a redelivered message keeps, so the same
`training_runs` row is reused and metrics re-sent for a step overwrite the old ones; SFT resumes
from its newest checkpoint in output_dir; the teacher and distillation stages start over and
replace `<output_dir>/model`. No retries: a failing run fails loudly, its row marked "failed".
A run longer than `KAP_TASK_TIME_LIMIT` (default 1 h) needs that limit raised (and the
visibility timeout above it) on the GPU workers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from kap.platform.queue import app
from kap.platform.settings import Settings


@functools.cache
def _engine() -> sa.Engine:
    # Built lazily in the worker's child process (never inherited across the fork).
    from kap.training.cli import database

    return database(Settings())


@app.task(name="kap.training.run_stage", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def run_stage_task(
    self: Any,
    stage: str,
    config_path: str,
    overrides: Sequence[str] = (),
    dataset: str | None = None,
    run_key: str | None = None,
) -> dict[str, Any]:
    """Run a training stage; returns its run id, model dir and curves (first and last values)."""
    from kap.training.datasets import load_snapshot
    from kap.training.stages import Recording, run_stage

    engine = _engine()
    snapshot = load_snapshot(engine, dataset) if dataset else None
    key = run_key or f"celery:{self.request.id}"
    result = run_stage(stage, config_path, overrides, Recording(engine, key, snapshot))
    return {
        "stage": result.stage,
        "run_id": result.run_id,
        "model_dir": None if result.model_dir is None else str(result.model_dir),
        "dataset_hash": snapshot.content_hash if snapshot else None,
        "curves": {name: list(pair) for name, pair in result.curves.items()},
    }
