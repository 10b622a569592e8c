"""Writing trajectory steps to PostgreSQL: one ORM flush per row vs one multi-row INSERT vs COPY.

    uv run python benchmarks/pg_step_writes.py [--trajectories 40] [--steps 250]

Runs against the PostgreSQL that the settings point at (`make bench` starts the local one),
in a scratch database it creates, migrates and drops. Prints a table and writes
benchmarks/results/pg_step_writes.json. A long trajectory has hundreds of steps, so this is
the write the self-play solver repeats most.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from kap.platform.db import Campaign, Step, Task, Trajectory, make_engine
from kap.platform.db.migrate import upgrade
from kap.platform.db.scratch import scratch_database
from kap.platform.settings import Settings

RESULTS = Path(__file__).parent / "results" / "pg_step_writes.json"


def step_rows(trajectory_id: uuid.UUID, n: int) -> list[dict[str, Any]]:
    return [
        {
            "trajectory_id": trajectory_id,
            "t": t,
            "role": "assistant" if t % 2 else "tool",
            "content": f"turn {t}: reasoning about the next search " * 4,
            "tool": "search",
            "args": {"query": f"who founded the company in hop {t}", "k": 5},
            "observation": "chunk text " * 60,
            "tokens": 180,
            "latency_ms": 12,
            "checks": {},
        }
        for t in range(n)
    ]


def make_trajectories(session: Session, count: int) -> list[uuid.UUID]:
    campaign = Campaign(name="bench", config={})
    session.add(campaign)
    session.flush()
    ids = []
    for i in range(count):
        task = Task(
            campaign_id=campaign.id,
            domain="search",
            kind="relation_chain",
            question="q",
            gold_answer="a",
            idempotency_key=f"task-{uuid.uuid4()}",
        )
        session.add(task)
        session.flush()
        traj = Trajectory(
            task_id=task.id,
            campaign_id=campaign.id,
            sample_index=i,
            model="m",
            idempotency_key=f"traj-{uuid.uuid4()}",
        )
        session.add(traj)
        session.flush()
        ids.append(traj.id)
    session.commit()
    return ids


def write_orm_per_row(engine: sa.Engine, tid: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    with Session(engine) as session:
        for row in rows:
            session.add(Step(**row))
            session.flush()  # what a naive writer does: one round trip per step
        session.commit()


def write_multirow(engine: sa.Engine, tid: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    with Session(engine) as session:
        session.execute(sa.insert(Step), rows)  # SQLAlchemy batches into multi-row VALUES
        session.commit()


COPY_COLUMNS = (
    "trajectory_id",
    "t",
    "role",
    "content",
    "tool",
    "args",
    "observation",
    "tokens",
    "latency_ms",
    "checks",
)


def write_copy(engine: sa.Engine, tid: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.cursor() as cur:
            sql = f"COPY steps ({', '.join(COPY_COLUMNS)}) FROM STDIN"
            with cur.copy(sql) as copy:
                for row in rows:
                    values = [row[c] for c in COPY_COLUMNS]
                    values[5], values[9] = json.dumps(values[5]), json.dumps(values[9])
                    copy.write_row(values)
        conn.commit()
    finally:
        raw.close()


WAYS: dict[str, Callable[[sa.Engine, uuid.UUID, list[dict[str, Any]]], None]] = {
    "orm, flush per row": write_orm_per_row,
    "multi-row INSERT": write_multirow,
    "COPY": write_copy,
}


def run(url: str, trajectories: int, steps: int) -> dict[str, Any]:
    engine = make_engine(url)
    results: dict[str, Any] = {}
    with Session(engine) as session:
        ids = make_trajectories(session, trajectories * len(WAYS))
    for w, (name, write) in enumerate(WAYS.items()):
        mine = ids[w * trajectories : (w + 1) * trajectories]
        began = time.perf_counter()
        for tid in mine:
            write(engine, tid, step_rows(tid, steps))
        seconds = time.perf_counter() - began
        with engine.connect() as conn:
            stored = conn.execute(
                sa.select(sa.func.count()).select_from(Step).where(Step.trajectory_id.in_(mine))
            ).scalar_one()
        assert stored == trajectories * steps, (name, stored)
        results[name] = {"seconds": seconds, "rows_per_s": stored / seconds, "rows": stored}
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=40)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args()
    settings = Settings()
    with scratch_database(settings.resolved_database_url(), prefix="kap_bench") as url:
        upgrade(url)
        results = run(url, args.trajectories, args.steps)
    base = results["orm, flush per row"]["seconds"]
    print(f"\n{args.trajectories} trajectories x {args.steps} steps, {platform.node()}")
    print(f"{'way':<22}{'seconds':>10}{'rows/s':>12}{'speed-up':>10}")
    for name, r in results.items():
        print(
            f"{name:<22}{r['seconds']:>10.2f}{r['rows_per_s']:>12.0f}{base / r['seconds']:>9.1f}x"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"node": platform.node(), "python": platform.python_version()}
    RESULTS.write_text(
        json.dumps({"params": vars(args), "machine": machine, "results": results}, indent=2)
    )
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
