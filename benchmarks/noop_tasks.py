"""No-op twins of the campaign tasks, for benchmarks/campaign_throughput.py only.

    PYTHONPATH=. kap worker --queues propose,solve,verify --include benchmarks.noop_tasks

Each has the signature of its campaign task (`kap.workers.propose`, `solve`, `verify`,
`record`) and does one PostgreSQL round trip (`SELECT 1`) on the worker's own engine, the one
the real tasks use, and nothing else: a campaign canvas built of them costs only the
orchestration (broker hops, result backend, chord join, one DB round trip per task). They
write nothing, so they are idempotent and `acks_late` like the real ones. The benchmark sends
them to the real queues (`apply_async(queue=...)`); nothing in the product routes to them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kap.platform.queue import app
from kap.workers.tasks import engine

NOOP: dict[str, Any] = {"acks_late": True, "time_limit": 60}


def _round_trip() -> None:
    with engine().connect() as conn:
        conn.execute(sa.text("SELECT 1"))


@app.task(name="kap.bench.noop_propose", **NOOP)  # type: ignore[untyped-decorator]
def noop_propose(campaign_id: str, position: int) -> dict[str, Any]:
    _round_trip()
    return {"campaign_id": campaign_id, "position": position, "accepted": True}


@app.task(name="kap.bench.noop_solve", **NOOP)  # type: ignore[untyped-decorator]
def noop_solve(proposed: dict[str, Any], sample_index: int) -> dict[str, Any]:
    _round_trip()
    return proposed | {"sample_index": sample_index}


@app.task(name="kap.bench.noop_verify", **NOOP)  # type: ignore[untyped-decorator]
def noop_verify(solved: dict[str, Any]) -> dict[str, Any]:
    _round_trip()
    return solved | {"accepted_trajectory": True}


@app.task(name="kap.bench.noop_record", **NOOP)  # type: ignore[untyped-decorator]
def noop_record(verified: list[dict[str, Any]], campaign_id: str, position: int) -> dict[str, Any]:
    _round_trip()
    return {"campaign_id": campaign_id, "position": position, "samples": len(verified)}
