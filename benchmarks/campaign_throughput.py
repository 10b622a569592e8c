"""Campaign throughput: a real scripted-solver campaign vs the same canvas of no-op tasks.

    uv run kap services up && uv run kap db upgrade
    uv run python benchmarks/campaign_throughput.py [--items 40] [--samples 2] [--workers 1]
        [--concurrency 2] [--paragraphs 400]

Against the services the settings point at (the demo's by default), in a scratch PostgreSQL
database (created, migrated, dropped) and a Redis database of its own (`--redis-db`, so no
other `kap worker` on the broker takes its messages): ingests the first N MuSiQue paragraphs
into a private domain with its evidence index, starts `kap worker` processes (each its own
process group, with `--include benchmarks.noop_tasks`), and runs, side by side:

- no-op canvas (median of `--repeats` runs): per item the campaign's exact canvas,
  propose -> chord(n x (solve -> verify)) -> record, on the same queues, of tasks that each
  do one `SELECT 1` (benchmarks/noop_tasks.py): what orchestration alone costs per item and
  per Celery task;
- scripted campaign: `create_campaign` + `enqueue_due`, as `kap campaign run` does, with the
  scripted solver — real throughput in items and trajectories per minute.

Each way gets a small untimed warm-up first (pool processes connect, load the index). Also
measured: the round-trip latency of one no-op task and of one no-op item alone. Deletes the
domain, its index and the scratch database at the end. Prints a table and writes
benchmarks/results/campaign_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from celery import Celery, chain, chord
from rich.console import Console
from rich.table import Table

from kap.graphstore.connection import connect
from kap.graphstore.embed import Embedder
from kap.graphstore.indexing import build_index, index_dir
from kap.graphstore.ingest import Ingestor
from kap.graphstore.loaders import load_file
from kap.graphstore.schema import ensure_schema
from kap.platform.db.migrate import upgrade
from kap.platform.db.models import CampaignItem, ItemStatus
from kap.platform.db.scratch import scratch_database
from kap.platform.db.session import make_engine
from kap.platform.queue import configure
from kap.platform.services.process import terminate
from kap.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "musique" / "corpus.json"
RESULTS = ROOT / "benchmarks" / "results" / "campaign_throughput.json"
KAP = str(Path(sys.executable).parent / "kap")
QUEUES = "propose,solve,verify"
OPEN = (ItemStatus.PENDING, ItemStatus.QUEUED)


# ---- setup: settings, corpus, workers ----


def bench_settings(settings: Settings, database_url: str, redis_db: int) -> Settings:
    """The same services, with the scratch database and a Redis database of the benchmark's."""
    broker = urlsplit(settings.resolved_broker_url())._replace(path=f"/{redis_db}")
    update = {"database_url": database_url, "broker_url": urlunsplit(broker)}
    return settings.model_copy(update=update)


def ingest(settings: Settings, domain: str, paragraphs: int, tmp: Path) -> int:
    """The first N MuSiQue paragraphs into `domain`, indexed where the workers look."""
    path = tmp / "corpus.json"
    path.write_text(json.dumps(json.loads(CORPUS.read_text())[:paragraphs]))
    with connect(settings) as driver:
        ensure_schema(driver, database=settings.neo4j_database)
        stats = Ingestor(driver, domain).run(load_file(path))
        index = build_index(driver, domain, Embedder(), database=settings.neo4j_database)
        index.save(index_dir(settings.state_dir, domain))
    return int(stats.chunks)


def drop_domain(settings: Settings, domain: str) -> None:
    with connect(settings) as driver:
        driver.execute_query(
            "MATCH (n {domain: $d}) DETACH DELETE n", d=domain, database_=settings.neo4j_database
        )
    shutil.rmtree(index_dir(settings.state_dir, domain), ignore_errors=True)


class Workers:
    """`kap worker` processes, each the leader of its own process group (stopped whole)."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = os.environ | {
            "KAP_DATABASE_URL": settings.resolved_database_url(),
            "KAP_BROKER_URL": settings.resolved_broker_url(),
            "PYTHONPATH": path,
        }
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int, concurrency: int) -> None:
        for i in range(n):
            log = (self.log_dir / f"worker-{i}.log").open("wb")
            argv = [
                KAP,
                "worker",
                "--queues",
                QUEUES,
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "warning",
                "--include",
                "benchmarks.noop_tasks",
            ]
            self.procs.append(
                subprocess.Popen(
                    argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    def wait_ready(self, app: Celery, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a worker exited early; see {self.log_dir}")
            if len(app.control.ping(timeout=1.0)) >= len(self.procs):
                return
        raise RuntimeError(f"workers not ready after {timeout:.0f}s; see {self.log_dir}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                terminate(proc.pid, timeout=60, log=self.log_dir)
            proc.wait()


# ---- the two ways ----


def noop_item(app: Celery, key: str, position: int, samples: int) -> Any:
    """`kap.workers.tasks.item_chain`'s shape, of no-op tasks, on the same queues."""
    sig = app.signature
    header = [
        chain(
            sig("kap.bench.noop_solve", args=(i,), queue="solve"),
            sig("kap.bench.noop_verify", queue="verify"),
        )
        for i in range(samples)
    ]
    body = sig("kap.bench.noop_record", args=(key, position), queue="verify")
    propose = sig("kap.bench.noop_propose", args=(key, position), queue="propose", immutable=True)
    return chain(propose, chord(header, body))


def run_noop(app: Celery, items: int, samples: int) -> dict[str, Any]:
    key = f"bench-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    results = [noop_item(app, key, p, samples).apply_async() for p in range(items)]
    enqueued = time.perf_counter() - began
    outs = [r.get(timeout=600) for r in results]
    seconds = time.perf_counter() - began
    assert all(o["samples"] == samples for o in outs), outs[:3]
    return {"seconds": seconds, "enqueue_s": enqueued, "trajectories": items * samples}


def latency_probe(app: Celery, samples: int, reps: int) -> dict[str, float]:
    """Median round trip, enqueue to result, of one no-op task and of one no-op item, alone."""
    task, item = [], []
    for rep in range(reps):
        began = time.perf_counter()
        app.signature(
            "kap.bench.noop_propose", args=("probe", rep), queue="propose"
        ).apply_async().get(timeout=60)
        task.append(time.perf_counter() - began)
        began = time.perf_counter()
        noop_item(app, "probe", rep, samples).apply_async().get(timeout=60)
        item.append(time.perf_counter() - began)
    return {"task_ms": 1000 * statistics.median(task), "item_ms": 1000 * statistics.median(item)}


def campaign_config(domain: str, items: int, samples: int, seed: int) -> Any:
    from kap.workers.campaign import CampaignConfig

    return CampaignConfig(
        name=f"bench-{seed}",
        domain=domain,
        tasks=items,
        hops=2,
        samples_per_task=samples,
        turn_budget=20,
        seed=seed,
    )


def run_campaign(engine: sa.Engine, config: Any) -> dict[str, Any]:
    """What `kap campaign run --wait` does: ledger, enqueue, reconcile until every item ends."""
    from kap.workers.campaign import campaign_status, create_campaign
    from kap.workers.tasks import enqueue_due

    began = time.perf_counter()
    campaign_id = create_campaign(engine, config)
    enqueue_due(engine, campaign_id)
    enqueued = time.perf_counter() - began
    open_items = (
        sa.select(sa.func.count())
        .select_from(CampaignItem)
        .where(CampaignItem.campaign_id == campaign_id, CampaignItem.status.in_(OPEN))
    )
    last_reconcile = time.perf_counter()
    while True:
        with engine.connect() as conn:
            if conn.scalar(open_items) == 0:
                break
        if time.perf_counter() - last_reconcile > 2.0:  # the reconciler's pass, as --wait does
            enqueue_due(engine, campaign_id)
            last_reconcile = time.perf_counter()
        time.sleep(0.1)
    seconds = time.perf_counter() - began
    facts = campaign_status(engine, campaign_id)
    assert facts["finished"] == facts["total"] == config.tasks, facts
    return {
        "seconds": seconds,
        "enqueue_s": enqueued,
        "trajectories": facts["trajectories"],
        "tasks_accepted": facts["tasks_accepted"],
        "pass_rate": facts["pass_rate"],
        "items_by_status": facts["items"],
        "rejection_reasons": facts["rejection_reasons"],
    }


# ---- the run ----


def measure(args: argparse.Namespace, settings: Settings, tmp: Path) -> dict[str, Any]:
    domain = f"bench-campaign-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {}
    with scratch_database(settings.resolved_database_url(), prefix="kap_bench") as url:
        upgrade(url)
        bench = bench_settings(settings, url, args.redis_db)
        app = configure(bench)  # the no-op tasks are sent by name
        engine = make_engine(url, pool_size=1, application_name="kap-bench")
        workers = Workers(bench, tmp)
        try:
            began = time.perf_counter()
            out["chunks"] = ingest(settings, domain, args.paragraphs, tmp)
            out["ingest_s"] = time.perf_counter() - began
            workers.start(args.workers, args.concurrency)
            workers.wait_ready(app)
            run_noop(app, args.warmup, args.samples)
            runs = [run_noop(app, args.items, args.samples) for _ in range(args.repeats)]
            out["no-op canvas"] = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
            out["latency"] = latency_probe(app, args.samples, args.probes)
            run_campaign(engine, campaign_config(domain, args.warmup, args.samples, seed=10_000))
            config = campaign_config(domain, args.items, args.samples, seed=args.seed)
            out["scripted campaign"] = run_campaign(engine, config)
        finally:
            workers.stop()
            engine.dispose()
            drop_domain(settings, domain)
    return out


def derive(r: dict[str, Any], items: int, samples: int, slots: int) -> None:
    tasks = items * (2 + 2 * samples)  # propose, n x (solve, verify), record
    r |= {
        "items": items,
        "celery_tasks": tasks,
        "items_per_min": 60 * items / r["seconds"],
        "trajectories_per_min": 60 * r["trajectories"] / r["seconds"],
        "ms_per_item": 1000 * r["seconds"] / items,
        "ms_per_task": 1000 * r["seconds"] / tasks,
        "slot_ms_per_task": 1000 * r["seconds"] * slots / tasks,
    }


def report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    slots = args.workers * args.concurrency
    noop, real = out["no-op canvas"], out["scripted campaign"]
    for r in (noop, real):
        derive(r, args.items, args.samples, slots)
    table = Table(
        "way",
        "seconds",
        "items/min",
        "traj/min",
        "ms/item",
        "ms/task",
        "slot-ms/task",
        title=f"{args.items} items x {args.samples} samples = {noop['celery_tasks']} Celery "
        f"tasks; {args.workers} worker x {args.concurrency} processes; {platform.node()}, "
        f"{os.cpu_count()} CPUs",
    )
    for name, r in (("no-op canvas", noop), ("scripted campaign", real)):
        table.add_row(
            name,
            f"{r['seconds']:.2f}",
            f"{r['items_per_min']:.0f}",
            f"{r['trajectories_per_min']:.0f}",
            f"{r['ms_per_item']:.0f}",
            f"{r['ms_per_task']:.1f}",
            f"{r['slot_ms_per_task']:.1f}",
        )
    console = Console(width=120)
    console.print(table)
    ratio = real["seconds"] / noop["seconds"]
    lat = out["latency"]
    console.print(
        f"scripted / no-op time: {ratio:.1f}x (orchestration ~{100 / ratio:.0f}% of the "
        f"campaign's wall time); scripted: {real['tasks_accepted']} of {args.items} tasks "
        f"accepted, {real['trajectories']} trajectories, pass rate {real['pass_rate']:.0%}\n"
        f"alone, median of {args.probes}: one no-op task {lat['task_ms']:.1f} ms enqueue to "
        f"result, one no-op item (4 hops deep, chord of {args.samples}) {lat['item_ms']:.1f} ms; "
        f"ingest of {args.paragraphs} paragraphs ({out['chunks']} chunks) + index "
        f"{out['ingest_s']:.1f} s"
    )
    out["ratio_scripted_over_noop"] = ratio
    machine = {
        "node": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"params": vars(args), "machine": machine, "results": out}, indent=2)
    )
    console.print(f"written to {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40, help="campaign items (task slots)")
    parser.add_argument("--samples", type=int, default=2, help="solver samples per item")
    parser.add_argument("--workers", type=int, default=1, help="`kap worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument("--paragraphs", type=int, default=400, help="MuSiQue paragraphs ingested")
    parser.add_argument("--warmup", type=int, default=4, help="untimed items before each way")
    parser.add_argument("--repeats", type=int, default=3, help="no-op runs (median kept)")
    parser.add_argument("--probes", type=int, default=5, help="latency probes (median kept)")
    parser.add_argument("--seed", type=int, default=0, help="the scripted campaign's seed")
    parser.add_argument("--redis-db", type=int, default=11, help="Redis database of the run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kap-bench-"))
    try:
        out = measure(args, Settings(), tmp)
    except BaseException:
        print(f"worker logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    report(args, out)


if __name__ == "__main__":
    main()
