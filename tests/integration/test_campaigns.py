"""Self-play campaigns end to end: the real PostgreSQL, Neo4j, Redis and `kap worker` processes.

A slice of the MuSiQue corpus is ingested into a private domain with its evidence index; each
test gets a fresh migrated database. Checked in SQL: every item finishes, every accepted task
has exactly `samples_per_task` trajectories and each trajectory exactly one verdict, nothing is
written twice, also when a worker is killed with SIGKILL in the middle of the campaign.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from kap.graphstore.connection import connect
from kap.platform.settings import Settings
from tests.support.stores import KAP, musique_domain, start_worker, stop_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUEUES = "propose,solve,verify"


@pytest.fixture(scope="module")
def corpus(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """400 MuSiQue paragraphs in a private domain, indexed where the workers look."""
    with musique_domain(services, tmp_path_factory.mktemp("corpus"), "test-campaign") as domain:
        yield domain


@pytest.fixture
def env(kap_env: dict[str, str], migrated_database: str) -> dict[str, str]:
    return {**kap_env, "KAP_DATABASE_URL": migrated_database}


@pytest.fixture
def engine(migrated_database: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(migrated_database, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


class Workers:
    """`kap worker` processes, each the leader of its own process group (killed whole)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, concurrency: int = 1) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"worker-{len(self.procs)}.log"
        proc = start_worker(self.env, log, QUEUES, concurrency)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            stop_worker(proc, self.log_dir)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(env, tmp_path)
    yield pool
    pool.stop()


def config_file(tmp_path: Path, domain: str, **fields: Any) -> Path:
    config = {"name": "it", "domain": domain, "tasks": 10, "hops": 2, "samples_per_task": 1,
              "turn_budget": 20, "seed": 0, **fields}  # fmt: skip
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def kap(env: dict[str, str], *args: str, timeout: float = 600) -> dict[str, Any]:
    done = subprocess.run([KAP, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def counts(engine: sa.Engine, campaign_id: str) -> dict[str, Any]:
    """What the store holds for a campaign, with the exactly-once checks' raw numbers."""
    q = {
        "items": "SELECT status, count(*) FROM campaign_items WHERE campaign_id = :c GROUP BY 1",
        "tasks": "SELECT count(*), count(DISTINCT idempotency_key) FROM tasks "
                 "WHERE campaign_id = :c",
        "accepted": "SELECT count(*) FROM tasks WHERE campaign_id = :c AND accepted",
        "fingerprints": "SELECT count(*) - count(DISTINCT meta->>'fingerprint') FROM tasks "
                        "WHERE campaign_id = :c",
        "trajectories": "SELECT count(*), count(DISTINCT (task_id, sample_index)) "
                        "FROM trajectories WHERE campaign_id = :c",
        "verdicts": "SELECT count(*), count(DISTINCT v.trajectory_id) FROM verdicts v "
                    "JOIN trajectories t ON t.id = v.trajectory_id WHERE t.campaign_id = :c",
        "turns": "SELECT coalesce(sum(n_turns), 0) FROM trajectories WHERE campaign_id = :c",
        "step_rows": "SELECT count(*) FROM steps s JOIN trajectories t ON t.id = s.trajectory_id "
                     "WHERE t.campaign_id = :c",
    }  # fmt: skip
    with engine.connect() as conn:
        out = {
            name: conn.execute(sa.text(sql), {"c": campaign_id}).all() for name, sql in q.items()
        }
    return {
        "items": dict(out["items"]),
        "tasks": tuple(out["tasks"][0]),
        "accepted": out["accepted"][0][0],
        "duplicate_fingerprints": out["fingerprints"][0][0],
        "trajectories": tuple(out["trajectories"][0]),
        "verdicts": tuple(out["verdicts"][0]),
        "turns": out["turns"][0][0],
        "step_rows": out["step_rows"][0][0],
    }


def assert_exactly_once(facts: dict[str, Any], *, items: int, samples: int) -> None:
    assert sum(facts["items"].values()) == items
    assert set(facts["items"]) <= {"done", "rejected"}, facts  # every item finished
    tasks, distinct_tasks = facts["tasks"]
    assert tasks == distinct_tasks <= items  # one task per item at most
    assert facts["duplicate_fingerprints"] == 0  # no two items asked the same thing
    trajectories, distinct = facts["trajectories"]
    assert trajectories == distinct == facts["accepted"] * samples  # none lost, none twice
    assert facts["verdicts"] == (trajectories, trajectories)  # one verdict each
    assert facts["step_rows"] == facts["turns"]  # every turn's step, once


def test_a_campaign_completes_with_exact_counts(
    corpus: str, env: dict[str, str], engine: sa.Engine, workers: Workers, tmp_path: Path,
    services: Settings,
) -> None:  # fmt: skip
    workers.start(concurrency=2)
    config = config_file(tmp_path, corpus, tasks=50, samples_per_task=2)
    status = kap(env, "campaign", "run", str(config), "--wait", "--json", "--poll", "1")
    assert status["finished"] == status["total"] == 50 and status["status"] == "succeeded"
    facts = counts(engine, status["campaign_id"])
    assert_exactly_once(facts, items=50, samples=2)
    assert facts["accepted"] > 0  # the proposer finds real two-hop chains in this corpus
    assert status["tasks_accepted"] == facts["accepted"]
    assert status["trajectories"] == facts["trajectories"][0]
    # action records went back into the graph, one per turn, and coverage rose
    with connect(services) as driver:
        records = driver.execute_query(
            "MATCH (a:ActionRecord) WHERE a.domain = $d RETURN count(a) AS n", d=corpus
        ).records[0]["n"]
    assert records == facts["turns"]


def test_a_worker_killed_mid_campaign_loses_nothing_and_duplicates_nothing(
    corpus: str, env: dict[str, str], engine: sa.Engine, workers: Workers, tmp_path: Path
) -> None:
    victim = workers.start(concurrency=2)
    config = config_file(tmp_path, corpus, tasks=20, samples_per_task=2, seed=5,
                         stuck_after_s=15)  # fmt: skip
    run = kap(env, "campaign", "run", str(config), "--json")
    campaign_id = run["campaign_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it once some, but not all, items are done
        if counts(engine, campaign_id)["items"].get("done", 0) > 0:
            break
        time.sleep(0.5)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool, mid-task, no cleanup
    victim.wait(timeout=30)
    workers.start(concurrency=2)
    status = kap(env, "campaign", "status", campaign_id, "--wait", "--json", "--poll", "1")
    assert status["finished"] == status["total"] == 20
    assert_exactly_once(counts(engine, campaign_id), items=20, samples=2)


def test_postgres_and_neo4j_restarted_mid_campaign_lose_nothing(
    corpus: str, env: dict[str, str], engine: sa.Engine, workers: Workers, tmp_path: Path,
    services: Settings,
) -> None:  # fmt: skip
    from kap.platform.services.manager import ServiceManager

    workers.start(concurrency=2)
    config = config_file(tmp_path, corpus, tasks=16, samples_per_task=2, seed=11,
                         stuck_after_s=30)  # fmt: skip
    campaign_id = kap(env, "campaign", "run", str(config), "--json")["campaign_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not counts(engine, campaign_id)["items"].get("done"):
        time.sleep(0.5)
    manager = ServiceManager(services)
    for name in ("postgres", "neo4j"):  # writes in flight fail, are retried with backoff
        manager.down([name])
        time.sleep(2)
        manager.up([name])
    status = kap(env, "campaign", "status", campaign_id, "--wait", "--json", "--poll", "1")
    assert status["finished"] == status["total"] == 16
    assert_exactly_once(counts(engine, campaign_id), items=16, samples=2)


def test_cancel_stops_a_campaign_and_resume_finishes_it(
    corpus: str, env: dict[str, str], engine: sa.Engine, workers: Workers, tmp_path: Path
) -> None:
    config = config_file(tmp_path, corpus, tasks=6, seed=9)
    run = kap(env, "campaign", "run", str(config), "--json")  # no worker yet: all queued
    campaign_id = run["campaign_id"]
    done = subprocess.run([KAP, "campaign", "cancel", campaign_id], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0 and "6 open items cancelled" in done.stdout
    workers.start()
    time.sleep(3)  # the queued chains run, find the campaign cancelled, and write nothing
    assert counts(engine, campaign_id)["tasks"] == (0, 0)
    done = subprocess.run([KAP, "campaign", "resume", campaign_id], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = kap(env, "campaign", "status", campaign_id, "--wait", "--json", "--poll", "1")
    assert status["finished"] == 6 and status["status"] == "succeeded"
    assert_exactly_once(counts(engine, campaign_id), items=6, samples=1)


def test_reverify_adds_one_verdict_per_trajectory_per_version(
    corpus: str, env: dict[str, str], engine: sa.Engine, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    status = kap(env, "campaign", "run", str(config_file(tmp_path, corpus, tasks=4, seed=3)),
                 "--wait", "--json", "--poll", "1")  # fmt: skip
    campaign_id = status["campaign_id"]
    n = counts(engine, campaign_id)["trajectories"][0]
    same = kap(env, "campaign", "reverify", campaign_id)  # the version it was judged with
    assert same["trajectories"] == n
    assert counts(engine, campaign_id)["verdicts"] == (n, n)
    again = kap(env, "campaign", "reverify", campaign_id, "--version", "2")
    assert again["correct"] == same["correct"]  # same rules, same judgement
    assert counts(engine, campaign_id)["verdicts"] == (2 * n, n)


def test_a_bad_config_is_named_and_nothing_is_written(
    env: dict[str, str], engine: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndomain: d\ntasks: 0\n")
    done = subprocess.run([KAP, "campaign", "run", str(path)], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 1 and "tasks" in done.stderr and str(path) in done.stderr
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM campaigns")) == 0
