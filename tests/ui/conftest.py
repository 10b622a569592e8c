"""Stores filled by a real small campaign, for the explorer's tests (one set per session).

A 400-paragraph MuSiQue slice is ingested into a private domain with its evidence index; a
fresh migrated database gets a scripted-policy campaign (12 tasks x 2 samples) run by a real
`kap worker`, a training run with metrics, and one long trajectory (300 steps, ~45K tokens).
The app reads them through the read-only role, as it does in production; the worker keeps
running for the tests that send it tasks (launch, cancel).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from kap.platform.settings import Settings
from tests.support.stores import KAP, curator_url, musique_domain, start_worker, stop_worker

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "ui" / "src" / "kap" / "ui" / "streamlit_app.py"
LONG_STEPS, LONG_TOKENS = 300, 45_000


@pytest.fixture(scope="session")
def ui_database(database_url: str, services: Settings) -> Iterator[dict[str, str]]:
    """A fresh database at the migrations' head: its owner URL and its read-only role's URL."""
    from kap.platform.db import migrate
    from kap.platform.db.scratch import scratch_database

    with scratch_database(database_url, prefix="kap_ui") as url:
        migrate.upgrade(url)
        yield {"owner": url, "curator": curator_url(services, url)}


@pytest.fixture(scope="session")
def owner_engine(ui_database: dict[str, str]) -> Iterator[sa.Engine]:
    engine = sa.create_engine(ui_database["owner"], poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def ui_env(kap_env: dict[str, str], ui_database: dict[str, str]) -> dict[str, str]:
    return {**kap_env, "KAP_DATABASE_URL": ui_database["owner"],
            "KAP_CURATOR_URL": ui_database["curator"]}  # fmt: skip


def explorer_env(ui_env: dict[str, str]) -> dict[str, str]:
    """What the explorer is given: the read-only role's URL, not the owner's."""
    return {k: v for k, v in ui_env.items() if k != "KAP_DATABASE_URL"}


@pytest.fixture(scope="module")
def app_env(ui_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """This process's environment set to the explorer's, for this module (AppTest runs the
    app in-process)."""
    env = explorer_env(ui_env)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAP_DATABASE_URL", raising=False)
        for key, value in env.items():
            if key.startswith("KAP_"):
                mp.setenv(key, value)
        yield env


@pytest.fixture(scope="session")
def corpus(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """400 MuSiQue paragraphs in a private domain, indexed where the workers look."""
    with musique_domain(services, tmp_path_factory.mktemp("corpus"), "test-ui") as domain:
        yield domain


@pytest.fixture(scope="session")
def worker(ui_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One `kap worker` on the campaign queues and `default` (the explorer's tasks)."""
    logs = tmp_path_factory.mktemp("worker")
    proc = start_worker(ui_env, logs / "worker.log", "default,propose,solve,verify", 2)
    yield logs / "worker.log"
    stop_worker(proc, logs)


def kap_json(env: dict[str, str], *args: str, timeout: float = 600) -> dict[str, Any]:
    done = subprocess.run([KAP, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="session")
def campaign(
    corpus: str, worker: Path, ui_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A finished scripted campaign: 12 tasks x 2 samples over the corpus (about a third of
    the proposals pass the five criteria, so some tasks are accepted whatever the order)."""
    config = {"name": "ui-explorer", "domain": corpus, "tasks": 12, "hops": 2,
              "samples_per_task": 2, "turn_budget": 20, "seed": 1}  # fmt: skip
    path = tmp_path_factory.mktemp("campaign") / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    status = kap_json(ui_env, "campaign", "run", str(path), "--wait", "--json", "--poll", "1")
    assert status["status"] == "succeeded" and status["trajectories"] > 0, status
    return status | {"domain": corpus}


@pytest.fixture(scope="session")
def training_run(owner_engine: sa.Engine) -> dict[str, Any]:
    """A finished SFT run with loss, eval loss and reward curves."""
    run_id = uuid.uuid4()
    with owner_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO training_runs (id, name, stage, status, base_model) "
                "VALUES (:id, 'ui-sft-tiny', 'sft', 'succeeded', 'tiny-config')"
            ),
            {"id": run_id},
        )
        conn.execute(sa.text(
            "INSERT INTO run_metrics (run_id, step, name, value) VALUES (:r, :s, :n, :v)"),
            [{"r": run_id, "s": s, "n": n, "v": v}
             for s in range(8)
             for n, v in (("loss", 3.0 / (s + 1)), ("eval_loss", 3.2 / (s + 1)),
                          ("reward", s / 8))])  # fmt: skip
    return {"id": str(run_id), "name": "ui-sft-tiny"}


@pytest.fixture(scope="session")
def long_trajectory(owner_engine: sa.Engine) -> dict[str, Any]:
    """A trajectory of 300 steps and ~45K tokens, every third observation long (folded)."""
    ids = {k: uuid.uuid4() for k in ("campaign", "task", "trajectory")}
    question = f"Which long road leads to {ids['task'].hex[:6]}?"
    per_step = LONG_TOKENS // LONG_STEPS
    steps = [{"tid": ids["trajectory"], "t": t, "content": f"thinking at step {t}",
              "tool": "search", "args": json.dumps({"query": f"road {t}"}),
              "observation": (f"passage {t} " * (60 if t % 3 == 0 else 5)).strip(),
              "tokens": per_step, "latency": 10 + t % 7,
              "checks": json.dumps({"observations": [{"read_chunk_ids": [f"chunk-{t}"]}]})}
             for t in range(LONG_STEPS)]  # fmt: skip
    with owner_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO campaigns (id, name, status) VALUES (:id, 'ui-long', 'succeeded')"
            ),
            {"id": ids["campaign"]},
        )
        conn.execute(
            sa.text(
                "INSERT INTO tasks (id, campaign_id, domain, kind, question, gold_answer, "
                "accepted, idempotency_key) VALUES (:id, :c, 'long-domain', 'relation_chain', "
                ":q, 'the end', true, :id)"
            ),
            {"id": ids["task"], "c": ids["campaign"], "q": question},
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectories (id, task_id, campaign_id, sample_index, model, status, "
                "n_turns, n_tokens, final_answer, idempotency_key) VALUES (:id, :task, :c, 0, "
                "'scripted', 'answered', :n, :tokens, 'the end', :id)"
            ),
            {
                "id": ids["trajectory"],
                "task": ids["task"],
                "c": ids["campaign"],
                "n": LONG_STEPS,
                "tokens": LONG_TOKENS,
            },
        )
        conn.execute(sa.text(
            "INSERT INTO steps (trajectory_id, t, role, content, tool, args, observation, tokens, "
            "latency_ms, checks) VALUES (:tid, :t, 'assistant', :content, :tool, "
            "CAST(:args AS jsonb), :observation, :tokens, :latency, CAST(:checks AS jsonb))"),
            steps)  # fmt: skip
    return {"id": str(ids["trajectory"]), "question": question}


def wait_for(predicate: Any, timeout: float = 60.0, every: float = 0.5) -> Any:
    """Poll `predicate()` until it returns something truthy; that value, or the last one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = predicate()
    return value
