"""Recording a training run: per-step scalar metrics and the run's lifecycle, to files or Postgres.

Every trainer takes a `RunRecorder` and calls `log(step, metrics)` once per optimizer step (and
for evaluations) and `finish(status)` once at the end; only rank 0 records. Implementations:

- `JsonlRecorder(path)`: one JSON line per call, appended (a resumed run continues the file).
  Lines: {"event": "start", "config": ...}, {"event": "metrics", "step": s, "metrics": {...}},
  {"event": "finish", "status": ...}; `read_jsonl_metrics` reads the metric lines back.
- `PostgresRecorder`: the `training_runs` row (created once per `idempotency_key`, so a
  redelivered Celery task or a resumed run reuses it) and `run_metrics` rows, upserted on
  (run_id, name, step) with one multi-row `INSERT ... ON CONFLICT DO UPDATE` per flush; metrics
  are buffered and flushed every `flush_every` steps and at `finish`. A resumed run that logs a
  step again overwrites it.
- `MemoryRecorder` (tests, benchmarks), `NullRecorder`, and `MultiRecorder` (fan-out).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from kap.platform.db.models import RunMetric, RunStatus, TrainingRun, TrainingStage
from kap.training.errors import TrainingError

MetricsFn = Callable[[int, Mapping[str, float]], None]  # (step, name -> value)


@runtime_checkable
class RunRecorder(Protocol):
    """Where a run's metrics and final status go."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record `metrics` at optimizer step `step` (>= 0)."""

    def finish(self, status: str) -> None:
        """Record the end of the run: one of `RunStatus`'s values ("succeeded", "failed", ...)."""


def _status(status: str) -> RunStatus:
    try:
        return RunStatus(status)
    except ValueError:
        allowed = [s.value for s in RunStatus]
        raise TrainingError(f"unknown run status {status!r}, expected one of {allowed}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _floats(metrics: Mapping[str, float]) -> dict[str, float]:
    # NaN and inf are kept (a NaN loss is news): Postgres DOUBLE and Python's json take both.
    return {name: float(value) for name, value in metrics.items()}


# ---- simple recorders ----


class NullRecorder:
    """Records nothing (ranks other than 0, or runs nobody watches)."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def finish(self, status: str) -> None:
        _status(status)


class MemoryRecorder:
    """Keeps every call in lists: `history` [(step, metrics)], `status` (None while running)."""

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []
        self.status: str | None = None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.history.append((step, _floats(metrics)))

    def finish(self, status: str) -> None:
        self.status = _status(status).value

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in logging order."""
        return [(s, m[name]) for s, m in self.history if name in m]

    def curves(self) -> dict[str, tuple[float, float]]:
        """Each metric's first and last value, in logging order."""
        out: dict[str, tuple[float, float]] = {}
        for _, metrics in self.history:
            for name, value in metrics.items():
                out[name] = (out[name][0] if name in out else value, value)
        return out


@contextlib.contextmanager
def finishing(recorder: RunRecorder) -> Iterator[RunRecorder]:
    """Finish the recorder "succeeded", "failed" or "cancelled" (Ctrl-C) as the block ends."""
    try:
        yield recorder
    except KeyboardInterrupt:
        recorder.finish("cancelled")
        raise
    except BaseException:
        recorder.finish("failed")
        raise
    recorder.finish("succeeded")


class MultiRecorder:
    """Fans every call out to several recorders, in order."""

    def __init__(self, *recorders: RunRecorder) -> None:
        self.recorders = recorders

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for recorder in self.recorders:
            recorder.log(step, metrics)

    def finish(self, status: str) -> None:
        for recorder in self.recorders:
            recorder.finish(status)


class JsonlRecorder:
    """Appends one JSON line per call to `path` (flushed at once, so `tail -f` follows it)."""

    def __init__(self, path: str | Path, *, config: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if config is not None:
            self._write({"event": "start", "config": dict(config)})

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "time": _now().isoformat()}, default=str)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._write({"event": "metrics", "step": step, "metrics": _floats(metrics)})

    def finish(self, status: str) -> None:
        self._write({"event": "finish", "status": _status(status).value})


def read_jsonl_metrics(path: str | Path) -> list[tuple[int, dict[str, float]]]:
    """The (step, metrics) lines of a `JsonlRecorder` file, in file order."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "metrics":
            out.append((int(record["step"]), dict(record["metrics"])))
    return out


# ---- PostgreSQL ----


class PostgresRecorder:
    """The run as a `training_runs` row and its curves as `run_metrics` rows.

    Construction creates the row (or, with an `idempotency_key` seen before, finds it) and marks
    it running; `run_id` names it. Status and timestamps are updated in place; `config` and the
    dataset columns are written only when the row is created.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        name: str,
        stage: TrainingStage | str,
        base_model: str,
        config: Mapping[str, Any],
        idempotency_key: str | None = None,
        dataset_id: uuid.UUID | None = None,
        dataset_hash: str | None = None,
        checkpoint_dir: str | None = None,
        flush_every: int = 10,
    ) -> None:
        if flush_every < 1:
            raise TrainingError(f"flush_every must be >= 1, got {flush_every}")
        self.engine = engine
        self.flush_every = flush_every
        self._buffer: dict[tuple[str, int], float] = {}  # (name, step) -> value, last one wins
        self._steps_buffered: set[int] = set()
        row = {
            "name": name,
            "stage": TrainingStage(stage),
            "base_model": base_model,
            "config": json.loads(json.dumps(dict(config), default=str)),
            "idempotency_key": idempotency_key,
            "dataset_id": dataset_id,
            "dataset_hash": dataset_hash,
            "checkpoint_dir": checkpoint_dir,
        }
        self.run_id = self._create_or_find(row)

    def _create_or_find(self, row: dict[str, Any]) -> uuid.UUID:
        with self.engine.begin() as conn:
            stmt = insert(TrainingRun).values(id=uuid.uuid4(), **row)
            if row["idempotency_key"] is not None:
                stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])
            run_id = conn.execute(stmt.returning(TrainingRun.id)).scalar_one_or_none()
            if run_id is None:  # the key was taken: this is a redelivery or a resume
                run_id = conn.execute(
                    sa.select(TrainingRun.id).where(
                        TrainingRun.idempotency_key == row["idempotency_key"]
                    )
                ).scalar_one()
            conn.execute(
                sa.update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .values(
                    status=RunStatus.RUNNING,
                    started_at=sa.func.coalesce(TrainingRun.started_at, sa.func.now()),
                    finished_at=None,
                    checkpoint_dir=sa.func.coalesce(
                        row["checkpoint_dir"], TrainingRun.checkpoint_dir
                    ),
                )
            )
        return uuid.UUID(str(run_id))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in _floats(metrics).items():
            self._buffer[(name, step)] = value
        self._steps_buffered.add(step)
        if len(self._steps_buffered) >= self.flush_every:
            self.flush()

    def flush(self) -> int:
        """Write the buffered metrics in one statement; returns the number of rows sent."""
        if not self._buffer:
            return 0
        rows = [
            {"run_id": self.run_id, "name": name, "step": step, "value": value}
            for (name, step), value in self._buffer.items()
        ]
        stmt = insert(RunMetric).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "name", "step"], set_={"value": stmt.excluded.value}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)
        self._buffer.clear()
        self._steps_buffered.clear()
        return len(rows)

    def finish(self, status: str) -> None:
        final = _status(status)
        self.flush()
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(TrainingRun)
                .where(TrainingRun.id == self.run_id)
                .values(status=final, finished_at=sa.func.now())
            )
