"""Curation against the real PostgreSQL (and Neo4j for provenance): the read-only role refuses
an abuse corpus, the views answer the common questions, datasets freeze, hash, export and never
change, the audit finds planted leaks, and a dataset item traces down to the graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import psycopg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from kap.graphstore.provenance import trace
from kap.platform.curation.audit import audit, load_eval
from kap.platform.curation.datasets import (
    create_dataset,
    dataset_records,
    export_bytes,
    export_dataset,
    get_dataset,
    list_datasets,
    verify,
)
from kap.platform.curation.query import run_query
from kap.platform.db.models import (
    Campaign,
    Dataset,
    DatasetItem,
    Role,
    Step,
    Task,
    Trajectory,
    TrajectoryStatus,
    Verdict,
)
from kap.platform.errors import CurationError, QueryRefused
from kap.training.chat import load_conversations_jsonl
from kap.training.datasets import load_snapshot

pytestmark = pytest.mark.integration

KAP = str(Path(sys.executable).parent / "kap")
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
SUMMARY = "SELECT trajectory_id FROM curation.trajectory_summary"


@pytest.fixture
def engine(migrated_database: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(migrated_database, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def curator(curator_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(curator_url)
    yield engine
    engine.dispose()


def conversation(i: int, question: str, chunk: str) -> list[dict[str, Any]]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "search", "arguments": json.dumps({"query": f"topic {i}"})},
    }
    return [
        {"role": "system", "content": "You answer with tools."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"passage {chunk} about topic {i}"},
        {"role": "assistant", "content": f"The answer is city {i}."},
    ]  # fmt: skip


def seed(
    engine: sa.Engine, n: int = 6, *, questions: list[str] | None = None, chunk: str = "c0"
) -> list[uuid.UUID]:
    """One campaign: n accepted tasks (one trajectory each, even ones correct), one rejected."""
    ids = []
    with Session(engine) as session, session.begin():
        campaign = Campaign(name="curation-test", domains=["search", "code"])
        session.add(Task(campaign=campaign, domain="search", kind="relation_chain",
                         question="Which is it?", gold_answer="x", accepted=False,
                         criteria={"unambiguous": {"passed": False, "reason": "two answers"},
                                   "grounded": {"passed": True, "reason": "evidence found"}},
                         idempotency_key=f"t:{uuid.uuid4()}"))  # fmt: skip
        for i in range(n):
            question = (questions or [])[i] if i < len(questions or []) else f"Where is item {i}?"
            domain = ("search", "code")[i % 2]
            task = Task(campaign=campaign, domain=domain, kind="relation_chain",
                        question=question, gold_answer=f"city {i}", accepted=True,
                        criteria={"unambiguous": {"passed": True, "reason": "one path"}},
                        evidence=[[chunk]], idempotency_key=f"t:{uuid.uuid4()}")  # fmt: skip
            trajectory = Trajectory(
                task=task, campaign=campaign, sample_index=0, model="scripted",
                status=TrajectoryStatus.ANSWERED, n_turns=2, n_tokens=100 + i,
                final_answer=f"city {i}", messages=conversation(i, question, chunk), tools=TOOLS,
                idempotency_key=f"s:{uuid.uuid4()}",
                steps=[
                    Step(t=0, role=Role.ASSISTANT, tool="search", args={"query": f"topic {i}"},
                         observation=f"passage {chunk}", tokens=20, latency_ms=10 + i,
                         checks={"observations": [{"read_chunk_ids": [chunk]}]}),
                    Step(t=1, role=Role.ASSISTANT, content=f"The answer is city {i}.", tokens=8,
                         latency_ms=5),
                ],
                verdicts=[Verdict(verifier="em", verifier_version="1", correct=i % 2 == 0,
                                  reward=1.0 if i % 2 == 0 else 0.0, components={"em": i % 2 == 0},
                                  idempotency_key=f"v:{uuid.uuid4()}")],
            )  # fmt: skip
            session.add(trajectory)
            session.flush()
            ids.append(trajectory.id)
    return ids


# ---- the read-only role and the abuse corpus ----

ABUSE = {
    "DROP TABLE tasks": "not DROP",
    "CREATE TABLE x (a int)": "not CREATE",
    "DELETE FROM trajectories": "not DELETE",
    "UPDATE datasets SET frozen = false": "not UPDATE",
    "INSERT INTO dataset_items VALUES (gen_random_uuid(), 0, gen_random_uuid(), 'h')": "not INSERT",
    "SELECT 1; DROP TABLE tasks": "one statement only",
    "SELECT 1; SELECT 2": "one statement only",
    "COPY (SELECT 1) TO PROGRAM 'id'": "not COPY",
    "SELECT * FROM pg_authid": "permission denied for table pg_authid",
    "SELECT rolpassword FROM pg_catalog.pg_authid": "permission denied",
    "SELECT pg_sleep(30)": "statement timeout",
    "SET ROLE kap": "not SET",
    "SELECT set_config('role', 'kap', false)": 'permission denied to set role "kap"',
    "RESET ROLE": "not RESET",
    "WITH gone AS (DELETE FROM tasks RETURNING id) SELECT * FROM gone": "data-modifying",
    "SELECT * FROM tasks FOR UPDATE": "read-only transaction",
    "SELECT * INTO stolen FROM tasks": "SELECT ... INTO is not allowed",
    "CREATE TEMP TABLE t AS SELECT 1": "not CREATE",
    "SELECT pg_read_file('/etc/passwd')": "permission denied for function pg_read_file",
    "SELECT lo_import('/etc/passwd')": "permission denied for function lo_import",
    "SELECT * FROM alembic_version": "permission denied for table alembic_version",
    "SELECT nextval('steps_id_seq')": "permission denied for sequence",
    "": "empty query",
}


@pytest.mark.parametrize("sql", list(ABUSE))
def test_the_abuse_corpus_is_refused_with_its_reason(
    sql: str, curator: sa.Engine, engine: sa.Engine
) -> None:
    seed(engine, 2)
    with pytest.raises(QueryRefused, match=ABUSE[sql].replace("(", r"\(").replace(")", r"\)")):
        run_query(curator, sql, timeout_s=0.5)
    # nothing changed, and the connection is fit for the next query
    assert run_query(curator, "SELECT count(*) AS n FROM tasks").rows == [(3,)]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("CREATE TABLE public.x (a int)", "permission denied for schema public"),
        ("CREATE SCHEMA mine", "permission denied for database"),
        ("CREATE TEMP TABLE t (a int)", "permission denied to create temporary tables"),
        ("INSERT INTO datasets (name, version, sql) VALUES ('x', 1, 's')", "permission denied"),
        ("UPDATE trajectories SET n_turns = 0", "permission denied"),
        ("SET ROLE kap", "permission denied to set role"),
        ("SET SESSION AUTHORIZATION kap", "permission denied to set session authorization"),
    ],
)
def test_the_role_itself_refuses_writes_without_the_query_checks(
    sql: str, reason: str, curator_url: str
) -> None:
    """What the text checks stop first, the role refuses too: the role is the boundary."""
    url = (
        sa.make_url(curator_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with (
        psycopg.connect(url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=reason),
    ):
        conn.execute(sql.encode())


def test_rows_are_capped_through_the_cursor(curator: sa.Engine) -> None:
    result = run_query(curator, "SELECT g FROM generate_series(1, 1000000) AS g", max_rows=50)
    assert len(result.rows) == 50 and result.truncated and result.rows[-1] == (50,)
    result = run_query(curator, "SELECT g FROM generate_series(1, 50) AS g", max_rows=50)
    assert len(result.rows) == 50 and not result.truncated


def test_comments_and_a_trailing_semicolon_are_fine(curator: sa.Engine) -> None:
    sql = "/* how many */ -- tasks\n  select count(*) as n from tasks;  "
    assert run_query(curator, sql).records() == [{"n": 0}]


# ---- the views ----


def test_the_views_answer_the_common_questions(engine: sa.Engine, curator: sa.Engine) -> None:
    ids = seed(engine, 4)
    summary = run_query(curator, "SELECT * FROM curation.trajectory_summary ORDER BY n_tokens")
    rows = summary.records()
    assert [r["trajectory_id"] for r in rows] == ids
    first = rows[0]
    assert (first["campaign"], first["domain"], first["n_turns"], first["tools_used"]) == (
        "curation-test", "search", 2, ["search"],
    )  # fmt: skip
    assert (first["correct"], first["reward"], first["components"]) == (True, 1.0, {"em": True})
    assert first["n_tool_calls"] == 1 and first["question"] == "Where is item 0?"

    steps = run_query(curator, "SELECT * FROM curation.steps WHERE t = 0").records()
    assert len(steps) == 4 and {s["tool"] for s in steps} == {"search"}

    usage = run_query(curator, "SELECT * FROM curation.tool_usage ORDER BY domain").records()
    assert [(u["domain"], u["tool"], u["calls"], u["trajectories"]) for u in usage] == [
        ("code", "search", 2, 2), ("search", "search", 2, 2),
    ]  # fmt: skip
    assert usage[1]["mean_latency_ms"] == pytest.approx(11.0)  # latencies 10 and 12

    rejected = run_query(
        curator,
        "SELECT criterion, reason FROM curation.task_criteria WHERE NOT accepted AND NOT passed",
    ).records()
    assert rejected == [{"criterion": "unambiguous", "reason": "two answers"}]


def test_a_newer_verdict_wins_in_the_summary(engine: sa.Engine, curator: sa.Engine) -> None:
    (tid,) = seed(engine, 1)
    with Session(engine) as session, session.begin():
        session.add(Verdict(trajectory_id=tid, verifier="judge", verifier_version="2",
                            correct=False, reward=0.25, idempotency_key="v:new"))  # fmt: skip
    row = run_query(curator, "SELECT verifier, reward FROM curation.trajectory_summary").rows
    assert row == [("judge", 0.25)]


# ---- datasets ----


def test_a_dataset_freezes_what_the_query_selects(engine: sa.Engine, curator: sa.Engine) -> None:
    ids = seed(engine, 6)
    info = create_dataset(engine, curator, "correct", f"{SUMMARY} WHERE correct ORDER BY n_tokens")
    assert (info.ref, info.row_count, info.frozen) == ("correct@1", 3, True)
    assert info.content_hash and len(info.content_hash) == 64
    records = list(dataset_records(engine, info))
    assert [r["trajectory_id"] for r in records] == [str(i) for i in ids[0::2]]
    assert records[0]["messages"][1]["content"] == "Where is item 0?"
    assert (records[0]["domain"], records[0]["dataset"], records[0]["position"]) == (
        "search", "correct@1", 0,
    )  # fmt: skip

    # the same selection again: version 2, the same content hash; another order: another hash
    again = create_dataset(engine, curator, "correct", f"{SUMMARY} WHERE correct ORDER BY n_tokens")
    assert (again.version, again.content_hash) == (2, info.content_hash)
    other = create_dataset(
        engine, curator, "correct", f"{SUMMARY} WHERE correct ORDER BY n_tokens DESC"
    )
    assert other.content_hash != info.content_hash
    assert [d.ref for d in list_datasets(engine)] == ["correct@3", "correct@2", "correct@1"]
    assert get_dataset(engine, "correct").version == 3
    assert get_dataset(engine, "correct@1").content_hash == info.content_hash
    assert verify(engine, info) == []

    # training reads the same conversations, and records this hash
    snapshot = load_snapshot(engine, "correct@1")
    assert snapshot.content_hash == info.content_hash
    assert [c.id for c in snapshot.conversations] == [r["id"] for r in records]


def test_duplicates_keep_their_first_place(engine: sa.Engine, curator: sa.Engine) -> None:
    ids = seed(engine, 2)
    sql = f"SELECT trajectory_id FROM ({SUMMARY} UNION ALL {SUMMARY}) s"
    assert create_dataset(engine, curator, "twice", sql).row_count == len(ids)


@pytest.mark.parametrize(
    ("name", "sql", "reason"),
    [
        ("bad name!", SUMMARY, "dataset name 'bad name!'"),
        ("x@1", SUMMARY, "dataset name"),
        ("empty", f"{SUMMARY} WHERE false", "selects no trajectories"),
        ("wide", "SELECT trajectory_id AS a, 1 AS b FROM curation.trajectory_summary",
         "select a `trajectory_id` column"),
        ("junk", "SELECT 'not-a-uuid' AS trajectory_id", "not a trajectory id"),
        ("ghost", "SELECT gen_random_uuid() AS trajectory_id", "no trajectory"),
        ("drop", "DROP TABLE datasets", "not DROP"),
    ],
)  # fmt: skip
def test_bad_datasets_are_refused_and_store_nothing(
    name: str, sql: str, reason: str, engine: sa.Engine, curator: sa.Engine
) -> None:
    seed(engine, 2)
    create_dataset(engine, curator, "kept", SUMMARY)
    with pytest.raises(CurationError, match=reason):
        create_dataset(engine, curator, name, sql)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Dataset)) == 1
        assert conn.scalar(sa.select(sa.func.count()).select_from(DatasetItem)) == 2


def test_an_idempotency_key_returns_the_first_dataset(
    engine: sa.Engine, curator: sa.Engine
) -> None:
    seed(engine, 2)
    first = create_dataset(engine, curator, "task", SUMMARY, idempotency_key="celery:1")
    second = create_dataset(engine, curator, "task", SUMMARY, idempotency_key="celery:1")
    assert second == first and len(list_datasets(engine)) == 1


FROZEN_WRITES = [
    "UPDATE datasets SET name = 'renamed'",
    "UPDATE datasets SET frozen = false",
    "DELETE FROM datasets",
    "UPDATE dataset_items SET position = position + 10",
    "UPDATE dataset_items SET trajectory_id = (SELECT max(id::text)::uuid FROM trajectories)",
    "DELETE FROM dataset_items",
    "INSERT INTO dataset_items SELECT dataset_id, 99, trajectory_id, 'h' FROM dataset_items",
    "TRUNCATE dataset_items",
    "TRUNCATE datasets CASCADE",
    "UPDATE trajectories SET messages = '[]'",
    "UPDATE steps SET observation = 'rewritten'",
    "DELETE FROM steps",
    "DELETE FROM campaigns",
]


@pytest.mark.parametrize("sql", FROZEN_WRITES)
def test_a_frozen_dataset_never_changes_even_for_the_owner(
    sql: str, engine: sa.Engine, curator: sa.Engine
) -> None:
    seed(engine, 3)
    info = create_dataset(engine, curator, "frozen", SUMMARY)
    before = list(dataset_records(engine, info))
    with (
        pytest.raises(sa.exc.DBAPIError, match=r"frozen|violates foreign key"),
        engine.begin() as c,
    ):
        c.execute(sa.text(sql))
    assert get_dataset(engine, "frozen@1") == info
    assert list(dataset_records(engine, info)) == before
    assert verify(engine, info) == []


def test_the_curation_role_cannot_write_to_a_frozen_dataset(
    engine: sa.Engine, curator: sa.Engine
) -> None:
    seed(engine, 2)
    create_dataset(engine, curator, "frozen", SUMMARY)
    with pytest.raises(QueryRefused, match="not UPDATE"):
        run_query(curator, "UPDATE dataset_items SET item_hash = 'x'")
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), curator.begin() as c:
        c.execute(sa.text("UPDATE dataset_items SET item_hash = 'x'"))


def test_trajectories_outside_frozen_datasets_stay_writable(
    engine: sa.Engine, curator: sa.Engine
) -> None:
    ids = seed(engine, 2)
    create_dataset(engine, curator, "one", f"{SUMMARY} WHERE trajectory_id = '{ids[0]}'")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE steps SET tokens = 1 WHERE trajectory_id = :i"), {"i": ids[1]})
        conn.execute(sa.text("DELETE FROM trajectories WHERE id = :i"), {"i": ids[1]})


def test_exports_are_training_ready(engine: sa.Engine, curator: sa.Engine, tmp_path: Path) -> None:
    seed(engine, 4)
    info = create_dataset(engine, curator, "all", f"{SUMMARY} ORDER BY n_tokens")
    _, n = export_dataset(engine, "all", None, "jsonl", tmp_path / "all.jsonl")
    assert n == 4
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [line["position"] for line in lines] == [0, 1, 2, 3]
    assert {"trajectory_id", "task_id", "campaign_id", "domain", "messages", "tools"} <= set(
        lines[0]
    )
    assert lines[0]["messages"][2]["tool_calls"][0]["function"]["name"] == "search"
    conversations = load_conversations_jsonl(tmp_path / "all.jsonl")
    assert [c.domain for c in conversations] == ["search", "code", "search", "code"]

    export_dataset(engine, "all", 1, "parquet", tmp_path / "all.parquet")
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == 4
    assert table.schema.metadata[b"kap.content_hash"].decode() == info.content_hash
    rows = table.to_pylist()
    assert [json.loads(r["messages"]) for r in rows] == [line["messages"] for line in lines]
    assert export_bytes(engine, "all", 1, "jsonl") == (tmp_path / "all.jsonl").read_bytes()
    with pytest.raises(CurationError, match="format 'csv'"):
        export_bytes(engine, "all", 1, "csv")  # type: ignore[arg-type]
    with pytest.raises(CurationError, match="no dataset all@7"):
        export_dataset(engine, "all", 7, "jsonl", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


# ---- the contamination audit ----


def test_the_audit_finds_planted_leaks(
    engine: sa.Engine, curator: sa.Engine, tmp_path: Path
) -> None:
    evaluation = [
        {"id": "e1", "question": "Which river flows through the capital of the country where "
                                 "the Eiffel Tower stands?", "answer": "Seine"},
        {"id": "e2", "question": "Who composed the opera that premiered in Cairo in 1871 at "
                                 "the Khedivial Opera House?", "answer": "Giuseppe Verdi"},
        {"id": "e3", "question": "What is the boiling point of water at sea level in kelvin?",
         "answer": "373.15"},
    ]  # fmt: skip
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("\n".join(json.dumps(e) for e in evaluation) + "\n")
    questions = [
        f"{evaluation[0]['question']} Seine",  # verbatim leak with its answer
        "Who composed the opera that premiered in Cairo in 1871?",  # a partial leak (under)
        "Where is item 2?",
        "Tell me: " + evaluation[1]["question"].lower(),  # verbatim, other case and a prefix
        "Where is item 4?",
        "How many moons does Mars have?",
    ]
    ids = seed(engine, 6, questions=questions)
    create_dataset(engine, curator, "audited", f"{SUMMARY} ORDER BY n_tokens")
    report = audit(dataset_records(engine, get_dataset(engine, "audited")), load_eval(eval_path))
    flagged = {(hit.position, hit.eval_id) for hit in report.flagged}
    assert flagged == {(0, "e1"), (3, "e2")}
    assert {hit.trajectory_id for hit in report.flagged} == {str(ids[0]), str(ids[3])}
    assert report.as_dict()["eval_items_leaked"] == 2 and report.max_overlap == 1.0
    # the partial leak is measured but under the threshold; lowering it flags that item too
    low = audit(dataset_records(engine, get_dataset(engine, "audited")), load_eval(eval_path),
                threshold=0.3)  # fmt: skip
    assert (1, "e2") in {(hit.position, hit.eval_id) for hit in low.flagged}

    # the command: a JSON report, and --strict fails on a flag
    env_args = ["dataset", "audit", "audited", "--against", str(eval_path), "--json"]
    done = kap(engine, env_args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["flagged_items"] == 2
    assert kap(engine, [*env_args, "--strict"]).returncode == 1


def test_bad_eval_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"question": "ok?"}\n{"answer": "no question"}\n')
    with pytest.raises(CurationError, match=r"eval.jsonl:2: no question"):
        load_eval(path)
    path.write_text("{not json\n")
    with pytest.raises(CurationError, match=r"eval.jsonl:1: invalid JSON"):
        load_eval(path)


# ---- the commands ----


@pytest.fixture
def kap_env_for(
    kap_env: dict[str, str], migrated_database: str, curator_url: str
) -> dict[str, str]:
    return {**kap_env, "KAP_DATABASE_URL": migrated_database, "KAP_CURATOR_URL": curator_url}


def kap(
    engine: sa.Engine, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    url = engine.url.render_as_string(hide_password=False)
    full = env or {**os.environ, "KAP_DATABASE_URL": url}
    return subprocess.run([KAP, *args], env=full, capture_output=True, text=True, timeout=120)


def test_the_dataset_commands(
    engine: sa.Engine, kap_env_for: dict[str, str], tmp_path: Path
) -> None:
    seed(engine, 4)
    run = lambda *a: kap(engine, list(a), kap_env_for)  # noqa: E731

    done = run("dataset", "query", "SELECT domain, count(*) AS n FROM curation.trajectory_summary "
               "GROUP BY domain ORDER BY domain", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == [
        {"domain": "code", "n": 2},
        {"domain": "search", "n": 2},
    ]

    refused = run("dataset", "query", "DELETE FROM tasks")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "only a read-only query may run here" in refused.stderr and "DELETE" in refused.stderr
    assert "Traceback" not in refused.stderr

    done = run("dataset", "create", "cli", "--sql", f"{SUMMARY} WHERE correct", "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert (made["name"], made["version"], made["row_count"]) == ("cli", 1, 2)

    listed = json.loads(run("dataset", "list", "--json").stdout)
    assert [(d["name"], d["version"]) for d in listed] == [("cli", 1)]
    shown = run("dataset", "show", "cli@1", "--verify", "--json")
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["verified"] is True and facts["content_hash"] == made["content_hash"]
    assert facts["domains"] == {"search": 2}

    out = tmp_path / "cli.parquet"
    done = run("dataset", "export", "cli", "--format", "parquet", str(out))
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).num_rows == 2

    missing = run("dataset", "show", "nope")
    assert missing.returncode == 1 and "no dataset nope (datasets: cli)" in missing.stderr


# ---- provenance ----


def test_an_item_traces_to_its_steps_chunks_and_entities(
    engine: sa.Engine, curator: sa.Engine, graph: tuple[neo4j.Driver, str]
) -> None:
    driver, domain = graph
    chunk_id, entity = driver.execute_query(
        "MATCH (c:Chunk {domain: $d})-[:MENTIONS]->(e:Entity) RETURN c.id, e.name "
        "ORDER BY c.id LIMIT 1", d=domain,
    ).records[0]  # fmt: skip
    ids = seed(engine, 2, chunk=chunk_id)
    create_dataset(engine, curator, "traced", f"{SUMMARY} ORDER BY n_tokens")

    found = trace(curator, driver, "traced@1#1")
    assert found.trajectory["id"] == ids[1]
    assert found.dataset_item is not None and found.dataset_item["position"] == 1
    assert found.task["question"] == "Where is item 1?"
    assert [s["chunk_ids"] for s in found.steps] == [[chunk_id], []]
    assert [c["id"] for c in found.chunks] == [chunk_id]
    assert [c["id"] for c in found.task_chunks] == [chunk_id]
    assert found.chunks[0]["document"] and found.chunks[0]["text"]
    assert entity in {e["name"] for e in found.entities}
    assert found.verdict is not None and found.verdict["correct"] is False

    assert trace(curator, None, str(ids[0])).trajectory["id"] == ids[0]
    with pytest.raises(CurationError, match="no dataset item traced@1#9"):
        trace(curator, driver, "traced@1#9")
    with pytest.raises(CurationError, match="give a trajectory id or a dataset item"):
        trace(curator, driver, "traced")
