"""Training against the real PostgreSQL: run rows and metric curves, frozen dataset snapshots as
conversations, `kap train sft --dataset`, and the `train` queue's task in a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from kap.platform.curation.conversations import messages_from_steps
from kap.platform.db.models import (
    Campaign,
    Dataset,
    DatasetItem,
    Role,
    RunMetric,
    RunStatus,
    Step,
    Task,
    TrainingRun,
    Trajectory,
)
from kap.platform.db.session import make_engine
from kap.platform.errors import CurationError
from kap.platform.settings import Settings
from kap.training.chat import render_conversation
from kap.training.datasets import DatasetError, load_snapshot
from kap.training.runs import PostgresRecorder
from kap.training.tokenizer import corpus_texts, train_tokenizer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAP = str(Path(sys.executable).parent / "kap")
QUERY = {"type": "object", "properties": {"query": {"type": "string"}}}
SEARCH = {"name": "search", "description": "Search.", "parameters": QUERY}
TOOLS = [{"type": "function", "function": SEARCH}]
HASH = "sha256:" + "ab" * 32


@pytest.fixture
def engine(migrated_database: str) -> Iterator[sa.Engine]:
    engine = make_engine(migrated_database, pool_size=2)
    yield engine
    engine.dispose()


def steps_of(n: int) -> list[Step]:
    """A search trajectory: the call and its observation on one step, then a tool row, answer."""
    return [
        Step(t=0, role=Role.SYSTEM, content="You are a research agent."),
        Step(t=1, role=Role.USER, content=f"Where was person {n} born?"),
        Step(t=2, role=Role.ASSISTANT, content="Let me search.", tool="search",
             args={"query": f"person {n}"}, observation=f"Person {n} was born in Lyon."),
        Step(t=3, role=Role.ASSISTANT, content=None, tool="search", args={"query": "Lyon"}),
        Step(t=4, role=Role.TOOL, observation="Lyon is a city in France."),
        Step(t=5, role=Role.ASSISTANT, content=f"Person {n} was born in Lyon."),
    ]  # fmt: skip


def make_dataset(
    engine: sa.Engine,
    name: str,
    n: int,
    *,
    version: int = 1,
    frozen: bool = True,
    messages: list[dict[str, Any]] | None = None,
) -> uuid.UUID:
    """A campaign with `n` trajectories in two domains, and a dataset of them (reversed)."""
    with Session(engine) as session, session.begin():
        campaign = Campaign(name="c", domains=["search", "code"])
        trajectories = []
        for i in range(n):
            task = Task(
                campaign=campaign,
                domain=("search", "code")[i % 2],
                kind="chain",
                question="q",
                gold_answer="Lyon",
                idempotency_key=f"t:{uuid.uuid4()}",
            )
            trajectory = Trajectory(task=task, campaign=campaign, sample_index=0, model="scripted",
                                    tools=TOOLS, idempotency_key=f"s:{uuid.uuid4()}",
                                    steps=steps_of(i), messages=messages or [])  # fmt: skip
            trajectories.append(trajectory)
        dataset = Dataset(name=name, version=version, sql="SELECT ...", row_count=n)
        session.add_all([campaign, dataset])
        session.flush()
        for position, trajectory in enumerate(reversed(trajectories)):
            item = DatasetItem(dataset_id=dataset.id, position=position,
                               trajectory_id=trajectory.id, item_hash=f"h{position}")  # fmt: skip
            session.add(item)
        session.flush()
        # Frozen last: the database refuses items added to a frozen dataset.
        dataset.frozen, dataset.content_hash = frozen, HASH if frozen else None
        return dataset.id


# ---- run rows and curves ----


def test_postgres_recorder_upserts_curves_and_reuses_its_row(engine: sa.Engine) -> None:
    recorder = PostgresRecorder(
        engine,
        name="r",
        stage="sft",
        base_model="tiny",
        config={"lr": 1e-5},
        idempotency_key="k",
        flush_every=2,
    )
    recorder.log(1, {"loss": 3.0, "lr": 1e-5})
    recorder.log(2, {"loss": 2.5})  # the second step flushes
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(RunMetric)) == 3
    again = PostgresRecorder(engine, name="r", stage="sft", base_model="tiny", config={},
                             idempotency_key="k")  # a redelivered task: same row  # fmt: skip
    assert again.run_id == recorder.run_id
    again.log(2, {"loss": 2.25})  # a resumed run re-logs step 2: it overwrites
    again.finish("succeeded")
    with Session(engine) as session:
        run = session.get(TrainingRun, recorder.run_id)
        assert run is not None and run.status is RunStatus.SUCCEEDED and run.finished_at
        assert run.config == {"lr": 1e-5}  # written once, when the row was created
        curve = session.execute(
            sa.select(RunMetric.step, RunMetric.value)
            .where(RunMetric.run_id == run.id, RunMetric.name == "loss")
            .order_by(RunMetric.step)
        ).all()
        assert [tuple(row) for row in curve] == [(1, 3.0), (2, 2.25)]


# ---- snapshots ----


def test_a_frozen_snapshot_reads_back_as_conversations_in_item_order(engine: sa.Engine) -> None:
    dataset_id = make_dataset(engine, "search-v1", 3)
    snapshot = load_snapshot(engine, dataset_id)
    assert (snapshot.name, snapshot.version, len(snapshot.conversations)) == ("search-v1", 1, 3)
    assert snapshot.content_hash.startswith("sha256:")
    first = snapshot.conversations[0]
    assert first.domain == "search"  # items are reversed: 2, 1, 0 -> domains search, code, search
    assert [c.domain for c in snapshot.conversations] == ["search", "code", "search"]
    assert first.tools == TOOLS and first.messages[1]["content"] == "Where was person 2 born?"
    roles = [m["role"] for m in first.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    call = first.messages[2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"query": "person 2"}
    assert first.messages[3] == {"role": "tool", "tool_call_id": call["id"],
                                 "content": "Person 2 was born in Lyon."}  # fmt: skip
    assert first.messages[5]["tool_call_id"] == first.messages[4]["tool_calls"][0]["id"]
    # renders with loss on the assistant turns only
    tokenizer = train_tokenizer(corpus_texts(limit=50), vocab_size=400)
    sample = render_conversation(tokenizer, first.messages, tools=first.tools)
    assert 0 < sum(label != -100 for label in sample.labels) < len(sample.labels)
    # by name (newest frozen) and by name@version
    make_dataset(engine, "search-v1", 2, version=2)
    make_dataset(engine, "search-v1", 1, version=3, frozen=False)
    assert load_snapshot(engine, "search-v1").version == 2
    assert len(load_snapshot(engine, "search-v1@1").conversations) == 3


def test_unknown_and_unfrozen_datasets_are_refused(engine: sa.Engine) -> None:
    make_dataset(engine, "draft", 1, frozen=False)
    with pytest.raises(DatasetError, match="not frozen"):
        load_snapshot(engine, "draft@1")
    with pytest.raises(DatasetError, match="no dataset 'nothing'"):
        load_snapshot(engine, "nothing")
    with pytest.raises(DatasetError, match="version must be a number"):
        load_snapshot(engine, "draft@latest")
    with pytest.raises(DatasetError, match="no dataset"):
        load_snapshot(engine, uuid.uuid4())


def test_stored_messages_are_used_as_they_are(engine: sa.Engine) -> None:
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    dataset_id = make_dataset(engine, "with-messages", 1, messages=messages)
    (conversation,) = load_snapshot(engine, dataset_id).conversations
    assert conversation.messages == messages and conversation.tools == TOOLS


def test_a_tool_row_without_a_call_is_named() -> None:
    with pytest.raises(CurationError, match="t=1: a tool result with no tool call"):
        messages_from_steps([Step(t=0, role=Role.USER, content="hi"),
                             Step(t=1, role=Role.TOOL, observation="?")])  # fmt: skip


# ---- the command and the queue ----


def tiny_sft_config(tmp_path: Path) -> Path:
    config = {
        "tiny_model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                       "head_dim": 16, "intermediate_size": 64},
        "tokenizer_vocab_size": 400, "tokenizer_corpus_limit": 50, "eval_fraction": 0.0,
        "batch_size": 2, "max_length": 512, "max_steps": 3, "lr": 1e-3, "warmup_steps": 1,
        "output_dir": str(tmp_path / "sft"), "checkpoint_every": 0, "eval_every": 0,
    }  # fmt: skip
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_recorded(engine: sa.Engine, run_id: str, dataset_id: uuid.UUID) -> None:
    with Session(engine) as session:
        run = session.get(TrainingRun, uuid.UUID(run_id))
        assert run is not None and run.status is RunStatus.SUCCEEDED
        assert run.dataset_id == dataset_id and run.dataset_hash == HASH
        steps = session.scalars(
            sa.select(RunMetric.step).where(RunMetric.run_id == run.id, RunMetric.name == "loss")
        ).all()
        assert sorted(steps) == [1, 2, 3]


def test_kap_train_sft_on_a_dataset_records_the_run(
    engine: sa.Engine, migrated_database: str, kap_env: dict[str, str], tmp_path: Path
) -> None:
    dataset_id = make_dataset(engine, "search-v1", 6)  # 3 steps of 2
    env = {**kap_env, "KAP_DATABASE_URL": migrated_database}
    cmd = [KAP, "train", "sft", "--config", str(tiny_sft_config(tmp_path)),
           "--dataset", "search-v1@1", "--json"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model_dir"] == str(tmp_path / "sft" / "model")
    assert_recorded(engine, result["run_id"], dataset_id)


def test_kap_train_names_an_unreachable_database(kap_env: dict[str, str], tmp_path: Path) -> None:
    env = {**kap_env, "KAP_DATABASE_URL": "postgresql+psycopg://kap:x@127.0.0.1:9/none"}
    cmd = [KAP, "train", "sft", "--config", str(tiny_sft_config(tmp_path))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "cannot reach PostgreSQL" in done.stderr and "--no-record" in done.stderr
    assert not (tmp_path / "sft").exists()


def test_the_train_queue_runs_a_stage_in_a_real_worker(
    engine: sa.Engine, migrated_database: str, kap_env: dict[str, str], kap_settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    from kap.platform.queue import configure
    from kap.platform.services.manager import ServiceManager
    from kap.training.tasks import run_stage_task

    ServiceManager(kap_settings).up(["redis"])
    celery = configure(kap_settings)
    dataset_id = make_dataset(engine, "search-v1", 6)  # 3 steps of 2
    queue = f"train-test-{uuid.uuid4().hex[:8]}"  # private: no other worker takes it
    env = {**kap_env, "KAP_DATABASE_URL": migrated_database}
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([KAP, "worker", "--queues", queue, "--concurrency", "1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        sent = run_stage_task.apply_async(
            args=["sft", str(tiny_sft_config(tmp_path))],
            kwargs={"dataset": str(dataset_id)}, queue=queue,  # the default route is "train"
        )  # fmt: skip
        result = sent.get(timeout=300)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        celery.backend.result_consumer.stop()
    assert result["model_dir"] == str(tmp_path / "sft" / "model"), log.read_text()[-3000:]
    assert result["dataset_hash"] == HASH
    assert_recorded(engine, result["run_id"], dataset_id)
    with Session(engine) as session:
        run = session.get(TrainingRun, uuid.UUID(result["run_id"]))
        assert run is not None and run.idempotency_key == f"celery:{sent.id}"
