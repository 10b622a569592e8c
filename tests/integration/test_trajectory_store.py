"""The trajectory store's writes against a real, freshly migrated PostgreSQL: every column,
idempotency under redelivery (checked in SQL), COPY'd steps, and transient errors wrapped.

The trajectory comes from the real solver loop driven by a scripted fake policy over fake
tools (neither is a store)."""

from __future__ import annotations

import dataclasses
import json
import socket
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kap.platform.db.models import Campaign, Step, Task, Trajectory
from kap.platform.db.models import Verdict as VerdictRow
from kap.platform.db.session import make_engine
from kap.platform.errors import LLMError, TransientStoreError
from kap.workers.policy import Message, PolicyReply, tool_call
from kap.workers.solver import SolverConfig, SolveResult, StopReason, count_tokens, solve
from kap.workers.store import (
    OBSERVATION_SEPARATOR,
    write_task,
    write_trajectory,
    write_verdict,
)
from kap.workers.tools import SCHEMAS, ErrorKind, Observation, error, parse_arguments
from kap.workers.verifier import Gold, verify

pytestmark = pytest.mark.integration

LONG = "London is the capital of England. " * 50


class FakeTools:
    """search previews c1/c2; visit reads a chunk (one holds a NUL byte); answer ends."""

    schemas = SCHEMAS

    def execute(self, call: dict[str, Any]) -> Observation:
        try:
            name, args = parse_arguments(call)
        except ValueError as exc:
            return error(ErrorKind.MALFORMED, f"malformed tool call: {exc}")
        if name == "search":
            return Observation(json.dumps({"results": ["c1", "c2"]}), seen_chunk_ids=("c1", "c2"))
        if name == "visit":
            text = "Ada\x00Lovelace" if args["id"] == "c1" else LONG
            return Observation(f"text: {text}", read_chunk_ids=(args["id"],))  # a raw NUL
        if name == "answer":
            return Observation("recorded", done=True, answer=args["text"])
        return error(ErrorKind.UNKNOWN_TOOL, f"unknown tool {name!r}")


class FakePolicy:
    """Replies in order; an exception in the list is raised at that turn."""

    def __init__(self, replies: list[Message | Exception]) -> None:
        self.replies = list(replies)

    def next_message(self, messages: Sequence[Message], tools: Sequence[Any]) -> PolicyReply:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return PolicyReply(reply)


def _say(content: str, *calls: tuple[str, str]) -> Message:
    message: Message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [tool_call(f"call_{i}", n, a) for i, (n, a) in enumerate(calls)]
    return message


def answered_result() -> SolveResult:
    replies: list[Message | Exception] = [
        _say("look", ("search", '{"query": "Ada"}'), ("visit", '{"id": "c1"}')),
        _say("bad", ("visit", "{not json")),
        _say("thinking aloud"),
        _say("read more", ("visit", '{"id": "c2"}')),
        _say("done", ("answer", '{"text": "Charles Babbage"}')),
    ]
    return solve("Who worked with Ada?", FakePolicy(replies), FakeTools(), SolverConfig())


@pytest.fixture
def engine(migrated_database: str) -> sa.Engine:
    return make_engine(migrated_database)


@pytest.fixture
def campaign_id(engine: sa.Engine) -> uuid.UUID:
    with Session(engine) as session:
        campaign = Campaign(name="store-test", config={"tasks": 1}, domains=["d"])
        session.add(campaign)
        session.commit()
        return campaign.id


TASK = {
    "domain": "d",
    "kind": "relation_chain",
    "question": "Who worked with Ada?",
    "gold_answer": "Charles Babbage",
    "aliases": ("Babbage",),
    "evidence": (("c1",), ("c2", "c3")),
    "hops": ({"subject": "Ada", "predicate": "collaborated_with"},),
    "region": {"start": "e:ada", "k": 2},
    "criteria": {"valid": {"passed": True, "reason": "chain holds"}},
    "accepted": True,
}


def _count(engine: sa.Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


def test_task_is_written_once_with_every_column(engine: sa.Engine, campaign_id: uuid.UUID) -> None:
    first = write_task(engine, campaign_id, **TASK, idempotency_key="k:0:task", meta={"p": 0})
    again = write_task(engine, campaign_id, **TASK, idempotency_key="k:0:task", meta={"p": 9})
    assert again == first
    assert _count(engine, Task, Task.idempotency_key == "k:0:task") == 1
    with Session(engine) as session:
        row = session.get_one(Task, first)
        assert (row.campaign_id, row.domain, row.kind) == (campaign_id, "d", "relation_chain")
        assert (row.question, row.gold_answer) == (TASK["question"], "Charles Babbage")
        assert row.accepted is True
        assert row.aliases == ["Babbage"]
        assert row.evidence == [["c1"], ["c2", "c3"]]
        assert row.hops == [{"subject": "Ada", "predicate": "collaborated_with"}]
        assert row.region == {"start": "e:ada", "k": 2}
        assert row.criteria == {"valid": {"passed": True, "reason": "chain holds"}}
        assert row.meta == {"p": 0}  # the first write wins; a redelivery changes nothing
        assert row.created_at is not None


def test_trajectory_and_steps_are_written_once(engine: sa.Engine, campaign_id: uuid.UUID) -> None:
    task_id = write_task(engine, campaign_id, **TASK, idempotency_key="k:1:task")
    result = answered_result()
    assert result.stop_reason is StopReason.ANSWERED and len(result.steps) == 5
    kwargs: dict[str, Any] = {"task_id": task_id, "campaign_id": campaign_id, "sample_index": 0,
                              "model": "fake", "result": result, "tools": SCHEMAS,
                              "idempotency_key": "k:1:0:trajectory"}  # fmt: skip
    first = write_trajectory(engine, **kwargs)
    assert write_trajectory(engine, **kwargs) == first
    assert _count(engine, Trajectory, Trajectory.task_id == task_id) == 1
    assert _count(engine, Step, Step.trajectory_id == first) == len(result.steps)

    with Session(engine) as session:
        row = session.get_one(Trajectory, first)
        assert (row.task_id, row.campaign_id, row.sample_index, row.model) == (
            task_id, campaign_id, 0, "fake")  # fmt: skip
        assert (row.status, row.n_turns, row.final_answer) == ("answered", 5, "Charles Babbage")
        assert row.n_tokens == count_tokens(result.messages)
        assert row.tools == SCHEMAS
        # Whole conversation, with the NUL byte PostgreSQL refuses replaced by U+FFFD.
        assert len(row.messages) == len(result.messages)
        assert any("\x00" in str(m.get("content")) for m in result.messages)
        expected = json.dumps(result.messages).replace("\\u0000", "\\ufffd")
        assert row.messages == json.loads(expected)
        assert row.meta == {"stop_reason": "answered", "error": None,
                            "read_chunk_ids": ["c1", "c2"], "seen_chunk_ids": ["c1", "c2"],
                            "prompt_tokens": result.prompt_tokens,
                            "completion_tokens": result.completion_tokens}  # fmt: skip
        assert row.started_at is None and row.finished_at is not None
        steps = session.scalars(sa.select(Step).where(Step.trajectory_id == first)
                                .order_by(Step.t)).all()  # fmt: skip
    for step, record in zip(steps, result.steps, strict=True):
        assert (step.t, step.role, step.content) == (record.t, "assistant", record.content)
        assert step.tokens == record.completion_tokens
        assert step.latency_ms == round(record.latency_s * 1000)
        assert {k: step.checks[k] for k in record.checks} == record.checks
        assert step.checks["state"] == {"prompt_tokens": record.prompt_tokens,
                                        "prompt_hash": record.prompt_hash,
                                        "folded_turns": record.folded_turns}  # fmt: skip
        assert step.checks["calls"] == record.tool_calls
        for obs, meta in zip(record.observations, step.checks["observations"], strict=True):
            assert step.observation is not None
            text = step.observation[meta["start"] : meta["end"]]
            assert text == obs["content"].replace("\x00", "\ufffd")
            assert meta["read_chunk_ids"] == obs["read_chunk_ids"]
            assert meta["is_error"] == obs["is_error"]
    search_visit, malformed, idle, visit, answer = steps
    assert (search_visit.tool, search_visit.args) == ("search", {"query": "Ada"})
    assert search_visit.observation is not None
    assert OBSERVATION_SEPARATOR in search_visit.observation  # two calls, two observations
    assert (malformed.tool, malformed.args, malformed.checks["malformed"]) == ("visit", None, True)
    assert (idle.tool, idle.args, idle.observation) == (None, None, None)
    assert idle.checks["no_tool_call"] is True
    assert LONG in str(visit.observation)
    assert (answer.tool, answer.args) == ("answer", {"text": "Charles Babbage"})


def test_status_follows_the_stop_reason(engine: sa.Engine, campaign_id: uuid.UUID) -> None:
    task_id = write_task(engine, campaign_id, **TASK, idempotency_key="k:2:task")
    budget = solve("q", FakePolicy([_say("s", ("search", '{"query": "x"}'))] * 2), FakeTools(),
                   SolverConfig(max_turns=2))  # fmt: skip
    broken = solve("q", FakePolicy([LLMError("endpoint down")]), FakeTools(), SolverConfig())
    for i, (result, status) in enumerate([(budget, "truncated"), (broken, "failed")]):
        tid = write_trajectory(engine, task_id=task_id, campaign_id=campaign_id, sample_index=i,
                               model="fake", result=result, tools=[],
                               idempotency_key=f"k:2:{i}:trajectory")  # fmt: skip
        with Session(engine) as session:
            row = session.get_one(Trajectory, tid)
            assert (row.status, row.n_turns, row.final_answer) == (status, len(result.steps), None)
            assert row.meta["stop_reason"] == str(result.stop_reason)
        assert _count(engine, Step, Step.trajectory_id == tid) == len(result.steps)
    assert broken.steps == [] and "endpoint down" in str(broken.error)


def test_racing_deliveries_store_one_trajectory(engine: sa.Engine, campaign_id: uuid.UUID) -> None:
    task_id = write_task(engine, campaign_id, **TASK, idempotency_key="k:3:task")
    result = answered_result()

    def deliver(_: int) -> uuid.UUID:
        return write_trajectory(engine, task_id=task_id, campaign_id=campaign_id,
                                sample_index=0, model="fake", result=result, tools=[],
                                idempotency_key="k:3:0:trajectory")  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(deliver, range(8)))
    assert len(ids) == 1
    assert _count(engine, Trajectory, Trajectory.task_id == task_id) == 1
    assert _count(engine, Step, Step.trajectory_id == ids.pop()) == len(result.steps)


def test_verdict_is_written_once(engine: sa.Engine, campaign_id: uuid.UUID) -> None:
    task_id = write_task(engine, campaign_id, **TASK, idempotency_key="k:4:task")
    result = answered_result()
    tid = write_trajectory(engine, task_id=task_id, campaign_id=campaign_id, sample_index=0,
                           model="fake", result=result, tools=[],
                           idempotency_key="k:4:0:trajectory")  # fmt: skip
    gold = Gold("q", "Charles Babbage", ("Babbage",), (frozenset({"c1"}), frozenset({"c2"})))
    verdict = verify(gold, result.answer, answered=True, read_chunk_ids=result.read_chunk_ids)
    first = write_verdict(engine, tid, verdict, verifier="search", version="1",
                          idempotency_key="k:4:0:verdict")  # fmt: skip
    again = write_verdict(engine, tid, verdict, verifier="search", version="1",
                          idempotency_key="k:4:0:verdict")  # fmt: skip
    assert again == first and isinstance(first, int)
    assert _count(engine, VerdictRow, VerdictRow.trajectory_id == tid) == 1
    with Session(engine) as session:
        row = session.get_one(VerdictRow, first)
        assert (row.trajectory_id, row.verifier, row.verifier_version) == (tid, "search", "1")
        assert row.components == verdict.components
        assert (row.reward, row.correct) == (pytest.approx(verdict.reward), True)
        assert row.details == {}
    judged = dataclasses.replace(verdict, details={"judge": "no verdict"})
    other = write_verdict(engine, tid, judged, verifier="judge", version="1",
                          idempotency_key="k:4:0:verdict:judge")  # fmt: skip
    with Session(engine) as session:
        assert session.get_one(VerdictRow, other).details == {"judge": "no verdict"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_database_is_a_transient_error(migrated_database: str) -> None:
    url = sa.make_url(migrated_database).set(host="127.0.0.1", port=_closed_port())
    down = make_engine(url.render_as_string(hide_password=False))
    with pytest.raises(TransientStoreError) as caught:
        write_task(down, uuid.uuid4(), **TASK, idempotency_key="k:5:task")
    assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
    with pytest.raises(TransientStoreError):
        write_trajectory(down, task_id=uuid.uuid4(), campaign_id=uuid.uuid4(), sample_index=0,
                         model="fake", result=answered_result(), tools=[],
                         idempotency_key="k:5:0:trajectory")  # fmt: skip


def test_other_errors_propagate_unwrapped(engine: sa.Engine) -> None:
    with pytest.raises(IntegrityError):  # no such campaign: a bug, not worth a retry
        write_task(engine, uuid.uuid4(), **TASK, idempotency_key="k:6:task")


def test_only_connection_and_server_errors_count_as_transient() -> None:
    import psycopg

    from kap.workers.store import is_transient

    lost = sa.exc.DBAPIError("SELECT 1", {}, Exception("closed"), connection_invalidated=True)
    assert is_transient(lost)
    assert is_transient(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_transient(psycopg.errors.SerializationFailure("could not serialize"))
    assert not is_transient(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(sa.exc.ProgrammingError("SELECT", {}, Exception("syntax error")))
