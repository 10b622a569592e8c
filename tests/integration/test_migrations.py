"""Alembic migrations against a real PostgreSQL, and the constraints the writers rely on.

Each test gets a fresh empty database (`empty_database`). The cycle is the one CI runs:
upgrade head, `alembic check` (no drift), downgrade, upgrade again. The behaviour tests then
prove on the migrated schema what Celery redeliveries and curation depend on: idempotency
keys, `ON CONFLICT DO NOTHING`, RESTRICT on dataset items, cascades to steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kap.platform.db import migrate
from kap.platform.db.models import (
    Base,
    Campaign,
    Dataset,
    DatasetItem,
    Role,
    RunMetric,
    Step,
    Task,
    TrainingRun,
    TrainingStage,
    Trajectory,
    TrajectoryStatus,
    Verdict,
)
from kap.platform.db.session import make_engine, make_sessionmaker
from kap.platform.errors import DatabaseError

pytestmark = pytest.mark.integration

TABLES = set(Base.metadata.tables)
FOREIGN_KEY_VIOLATION = "23503"
UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def head_and_previous(url: str) -> tuple[str, str | None]:
    script = ScriptDirectory.from_config(migrate.alembic_config(url))
    head = script.get_revision("head")
    assert head is not None
    previous = head.down_revision
    assert previous is None or isinstance(previous, str)
    return head.revision, previous


@pytest.fixture
def migrated(migrated_database: str) -> str:
    return migrated_database


@pytest.fixture
def engine(migrated: str) -> Iterator[sa.Engine]:
    engine = make_engine(migrated, pool_size=2)
    yield engine
    engine.dispose()


# ---- the migration cycle ----


def test_upgrade_head_on_empty_database_creates_every_table(empty_database: str) -> None:
    assert migrate.current(empty_database) is None
    migrate.upgrade(empty_database)
    assert table_names(empty_database) == TABLES | {"alembic_version"}
    assert migrate.current(empty_database) == head_and_previous(empty_database)[0]


def test_check_finds_no_drift(migrated: str) -> None:
    migrate.check(migrated)


def test_check_reports_drift(migrated: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        # (a column no curation view reads: those cannot be dropped under the views)
        conn.execute(sa.text("ALTER TABLE campaign_items DROP COLUMN error"))
    with pytest.raises(DatabaseError, match="error"):
        migrate.check(migrated)


def test_check_constraints_match_the_models(engine: sa.Engine) -> None:
    # Alembic never compares CHECK constraints, so their names are compared here.
    expected = {
        ck.name
        for t in Base.metadata.tables.values()
        for ck in t.constraints
        if isinstance(ck, sa.CheckConstraint)
    }
    query = sa.text("SELECT conname FROM pg_constraint WHERE contype = 'c' AND conname LIKE 'ck_%'")
    with engine.connect() as conn:
        assert set(conn.scalars(query)) == expected


def test_downgrade_to_base_removes_everything_and_upgrade_again_works(migrated: str) -> None:
    migrate.downgrade(migrated, "base")
    assert table_names(migrated) <= {"alembic_version"}
    assert migrate.current(migrated) is None
    engine = sa.create_engine(migrated, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:  # identity sequences go with their tables
            sequences = conn.scalars(sa.text("SELECT relname FROM pg_class WHERE relkind = 'S'"))
            assert list(sequences) == []
    finally:
        engine.dispose()
    migrate.upgrade(migrated)
    assert table_names(migrated) == TABLES | {"alembic_version"}
    migrate.check(migrated)


def test_downgrade_one_then_upgrade_head(migrated: str) -> None:
    head, previous = head_and_previous(migrated)
    migrate.downgrade(migrated, "-1")
    assert migrate.current(migrated) == previous
    migrate.upgrade(migrated, "head")
    assert migrate.current(migrated) == head
    migrate.check(migrated)


def test_missing_migrations_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no Alembic environment at"):
        migrate.alembic_config("postgresql+psycopg://x@127.0.0.1/x", migrations_dir=tmp_path)


def test_config_keeps_a_percent_encoded_password_intact() -> None:
    url = "postgresql+psycopg://kap:p%40ss%25@127.0.0.1:1/kap"
    config = migrate.alembic_config(url)
    assert config.get_main_option("sqlalchemy.url") == url
    assert config.attributes["database_url"] == url


# ---- behaviour on the migrated schema ----


def seed(session: Session, *, samples: int = 1) -> tuple[Campaign, Task, list[Trajectory]]:
    campaign = Campaign(name="c", domains=["wiki"])
    task = Task(
        campaign=campaign,
        domain="wiki",
        kind="relation_chain",
        question="Who?",
        gold_answer="Ada",
        idempotency_key=f"propose:{uuid.uuid4()}",
    )
    trajectories = [
        Trajectory(
            task=task,
            campaign=campaign,
            sample_index=i,
            model="scripted",
            idempotency_key=f"solve:{task.idempotency_key}:{i}",
        )
        for i in range(samples)
    ]
    session.add_all([campaign, task, *trajectories])
    session.flush()
    return campaign, task, trajectories


def trajectory_row(task: Task, *, sample_index: int, key: str) -> dict[str, object]:
    return {
        "task_id": task.id,
        "campaign_id": task.campaign_id,
        "sample_index": sample_index,
        "model": "redelivered",
        "idempotency_key": key,
    }


def count(conn: sa.Connection, model: type[Base], *where: sa.ColumnElement[bool]) -> int:
    return int(conn.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


def sqlstate(exc: IntegrityError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def test_second_trajectory_with_same_idempotency_key_is_rejected(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        _, task, (first,) = seed(session)
    with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
        row = trajectory_row(task, sample_index=1, key=first.idempotency_key)
        conn.execute(sa.insert(Trajectory).values(**row))
    assert sqlstate(raised.value) == UNIQUE_VIOLATION
    with Session(engine) as session:
        (kept,) = session.scalars(sa.select(Trajectory)).all()
        assert (kept.id, kept.model, kept.sample_index) == (first.id, "scripted", 0)
        assert kept.status is TrajectoryStatus.RUNNING


def test_on_conflict_do_nothing_makes_a_redelivered_write_a_no_op(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        _, task, _ = seed(session, samples=0)
    row = trajectory_row(task, sample_index=0, key="solve:abc:0")
    stmt = (
        insert(Trajectory)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Trajectory.id)
    )
    with engine.begin() as conn:
        first_id = conn.execute(stmt).scalar_one()
    with engine.begin() as conn:  # the redelivery: no row, no error
        assert conn.execute(stmt).scalar_one_or_none() is None
        ids = conn.scalars(sa.select(Trajectory.id)).all()
    assert ids == [first_id]


def test_same_task_and_sample_under_a_new_key_is_rejected(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        _, task, _ = seed(session)
    with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
        conn.execute(sa.insert(Trajectory).values(**trajectory_row(task, sample_index=0, key="x")))
    assert sqlstate(raised.value) == UNIQUE_VIOLATION


def test_trajectory_in_a_dataset_cannot_be_deleted(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        _, _, (trajectory,) = seed(session)
        dataset = Dataset(name="d", version=1, sql="SELECT 1", row_count=1)
        dataset.items.append(DatasetItem(position=0, trajectory=trajectory, item_hash="h0"))
        session.add(dataset)
    with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
        conn.execute(sa.delete(Trajectory).where(Trajectory.id == trajectory.id))
    assert sqlstate(raised.value) == FOREIGN_KEY_VIOLATION
    with engine.connect() as conn:
        assert count(conn, Trajectory) == 1


def add_turns(trajectory: Trajectory) -> None:
    trajectory.steps.extend(
        [
            Step(t=0, role=Role.USER, content="Who?"),
            Step(t=1, role=Role.ASSISTANT, tool="search", args={"q": "Ada"}, tokens=12),
            Step(t=2, role=Role.TOOL, observation="chunk c1: Ada ...", latency_ms=40),
        ]
    )
    trajectory.verdicts.append(
        Verdict(
            verifier="exact",
            verifier_version="1",
            reward=1.0,
            correct=True,
            idempotency_key=f"verify:{trajectory.idempotency_key}:exact:1",
        )
    )


def test_deleting_a_trajectory_cascades_to_steps_and_verdicts(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        _, _, (doomed, kept) = seed(session, samples=2)
        add_turns(doomed)
        add_turns(kept)
    with engine.begin() as conn:
        conn.execute(sa.delete(Trajectory).where(Trajectory.id == doomed.id))
    with engine.connect() as conn:
        assert count(conn, Step, Step.trajectory_id == doomed.id) == 0
        assert count(conn, Verdict, Verdict.trajectory_id == doomed.id) == 0
        # Only the deleted trajectory's rows went.
        assert count(conn, Step, Step.trajectory_id == kept.id) == 3
        assert count(conn, Verdict, Verdict.trajectory_id == kept.id) == 1
        assert count(conn, Trajectory) == 1


def test_resent_run_metrics_upsert(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        run = TrainingRun(name="r", stage=TrainingStage.SFT, base_model="tiny")
        session.add(run)
    stmt = insert(RunMetric)
    upsert = stmt.on_conflict_do_update(
        index_elements=["run_id", "name", "step"], set_={"value": stmt.excluded.value}
    )
    with engine.begin() as conn:
        conn.execute(upsert, [{"run_id": run.id, "step": 1, "name": "loss", "value": 2.0}])
        conn.execute(upsert, [{"run_id": run.id, "step": 1, "name": "loss", "value": 1.5}])
        rows = conn.execute(sa.select(RunMetric.step, RunMetric.value)).all()
    assert [tuple(r) for r in rows] == [(1, 1.5)]


def test_raw_inserts_get_server_defaults_and_checks(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # what COPY and hand-written SQL rely on
        row = conn.execute(
            sa.text("INSERT INTO campaigns (name) VALUES ('raw') RETURNING id, status, config")
        ).one()
    assert isinstance(row.id, uuid.UUID)
    assert (row.status, row.config) == ("pending", {})
    with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO campaigns (name, status) VALUES ('x', 'PENDING')"))
    assert sqlstate(raised.value) == CHECK_VIOLATION


def test_a_frozen_dataset_needs_a_content_hash(engine: sa.Engine) -> None:
    with pytest.raises(IntegrityError) as raised, make_sessionmaker(engine).begin() as session:
        session.add(Dataset(name="d", version=1, sql="SELECT 1", frozen=True))
    assert sqlstate(raised.value) == CHECK_VIOLATION
