"""SQLAlchemy 2.0 models of the trajectory store: self-play output, curated datasets, training runs.

Writers (Celery tasks) append campaigns -> tasks -> trajectories -> steps/verdicts; curation
freezes SQL-selected trajectories into immutable, versioned `datasets`; training runs record
the dataset's content hash and stream `run_metrics`. The schema changes only through Alembic
(`migrations/`); `alembic check` keeps these models and the revisions in step.

Conventions:
- Every constraint and index gets its name from `NAMING_CONVENTION`, so migrations can refer to
  them by name and a downgrade drops exactly what the upgrade made.
- Status columns are `StrEnum`s stored as VARCHAR(32) with a named CHECK (no native PG enum
  types: adding a value is a CHECK swap in a migration, not an `ALTER TYPE` outside a txn).
- Every row that a redelivered Celery task could write twice carries a UNIQUE
  `idempotency_key`; writers use `INSERT ... ON CONFLICT (idempotency_key) DO NOTHING`.
- Deletes cascade down the self-play tree (campaign -> task -> trajectory -> steps, verdicts)
  but a trajectory inside a dataset cannot be deleted (RESTRICT), nor a dataset a run used.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# ck names need an explicit name on every CHECK (Enum(name=...) / CheckConstraint(name=...)).
NAMING_CONVENTION: dict[str, str] = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

JSONDict = dict[str, Any]
JSONList = list[Any]


class Base(DeclarativeBase):
    """Declarative base: named constraints, timestamptz, JSONB and TEXT by default."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute as is)
        str: Text(),
        float: Double(),
        datetime: DateTime(timezone=True),
        uuid.UUID: Uuid(),
        JSONDict: JSONB(),
        JSONList: JSONB(),
        list[str]: ARRAY(Text()),
    }


# ---- enums ----


class RunStatus(StrEnum):
    """Lifecycle of a campaign or a training run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrajectoryStatus(StrEnum):
    """How a solver rollout ended."""

    RUNNING = "running"
    ANSWERED = "answered"  # the agent gave a final answer (right or wrong: see verdicts)
    TRUNCATED = "truncated"  # turn or token budget exhausted
    FAILED = "failed"  # infrastructure error (LLM, tool, sandbox)


class ItemStatus(StrEnum):
    """Where one task slot of a campaign stands (the ledger the reconciler reads)."""

    PENDING = "pending"  # written before anything is enqueued
    QUEUED = "queued"  # its propose -> solve -> verify -> record chain went to the broker
    DONE = "done"  # its task was proposed, solved n times, verified and recorded
    REJECTED = "rejected"  # the proposal failed a criterion or duplicated another: kept, not solved
    FAILED = "failed"  # given up after the reconciler's last attempt
    CANCELLED = "cancelled"  # the campaign was cancelled before it finished


class Role(StrEnum):
    """OpenAI-style message role of one step."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class TrainingStage(StrEnum):
    """The three training stages of DESIGN §7."""

    SFT = "sft"
    GRPO = "grpo"
    DISTILL = "distill"


ENUM_LENGTH = 32  # fixed, so a longer new value is a CHECK change only, never a column change


def str_enum(enum_cls: type[StrEnum], name: str) -> Enum:
    """VARCHAR + named CHECK holding the enum's *values* (not its member names)."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=ENUM_LENGTH,
        values_callable=lambda cls: [member.value for member in cls],
        validate_strings=True,
    )


# ---- reusable column shapes ----

UuidPk = Annotated[
    uuid.UUID,
    # Client default so the ORM knows ids before flush; server default for raw SQL and COPY.
    mapped_column(primary_key=True, default=uuid.uuid4, server_default=func.gen_random_uuid()),
]
BigIdPk = Annotated[int, mapped_column(BigInteger, Identity(), primary_key=True)]
CreatedAt = Annotated[datetime, mapped_column(server_default=func.now())]
JSONDictCol = Annotated[JSONDict, mapped_column(default=dict, server_default=text("'{}'::jsonb"))]
JSONListCol = Annotated[JSONList, mapped_column(default=list, server_default=text("'[]'::jsonb"))]


def fk(target: str, *, ondelete: str) -> ForeignKey:
    """A foreign key whose delete rule is always spelled out."""
    return ForeignKey(target, ondelete=ondelete)


# ---- self-play ----


class Campaign(Base):
    """One self-play run: a config fanned out by Celery into propose/solve/verify tasks.

    No counter columns: many workers would update one hot row; counts come from queries.
    """

    __tablename__ = "campaigns"

    id: Mapped[UuidPk]
    name: Mapped[str]
    config: Mapped[JSONDictCol]
    domains: Mapped[list[str]] = mapped_column(default=list, server_default=text("'{}'"))
    status: Mapped[RunStatus] = mapped_column(
        str_enum(RunStatus, "status"), default=RunStatus.PENDING, server_default="pending"
    )
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    tasks: Mapped[list[Task]] = relationship(back_populates="campaign", passive_deletes=True)
    trajectories: Mapped[list[Trajectory]] = relationship(
        back_populates="campaign", passive_deletes=True
    )

    __table_args__ = (Index(None, "status"), Index(None, "created_at"))


class CampaignItem(Base):
    """One task slot of a campaign: the ledger row written before its work is enqueued."""

    __tablename__ = "campaign_items"

    id: Mapped[BigIdPk]
    campaign_id: Mapped[uuid.UUID] = mapped_column(fk("campaigns.id", ondelete="CASCADE"))
    position: Mapped[int]  # 0 .. tasks - 1; with the campaign, names the slot for idempotency keys
    status: Mapped[ItemStatus] = mapped_column(
        str_enum(ItemStatus, "status"), default=ItemStatus.PENDING, server_default="pending"
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    task_id: Mapped[uuid.UUID | None] = mapped_column(fk("tasks.id", ondelete="SET NULL"))
    error: Mapped[str | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("campaign_id", "position"),  # also the campaign_id index
        CheckConstraint("position >= 0", name="position_nonnegative"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        # Every ledger query (claim, finish, status) filters one campaign's items by status.
        Index(None, "campaign_id", "status", "updated_at"),
        Index(None, "task_id"),
    )


class Task(Base):
    """A proposed task: question, gold answer, the evidence it needs, the five criteria."""

    __tablename__ = "tasks"

    id: Mapped[UuidPk]
    campaign_id: Mapped[uuid.UUID] = mapped_column(fk("campaigns.id", ondelete="CASCADE"))
    domain: Mapped[str]
    kind: Mapped[str]  # relation_chain, tool_chain, constraint_set, ... (open per domain)
    question: Mapped[str]
    gold_answer: Mapped[str]
    aliases: Mapped[JSONListCol]
    evidence: Mapped[JSONListCol]  # chunk ids per hop: [[chunk_id, ...], ...]
    hops: Mapped[JSONListCol]
    region: Mapped[JSONDictCol]  # the sampled graph region (seed ids, k, obfuscation)
    criteria: Mapped[JSONDictCol]  # {criterion: {"passed": bool, "reason": str}}
    accepted: Mapped[bool] = mapped_column(default=False, server_default=false())
    meta: Mapped[JSONDictCol]
    idempotency_key: Mapped[str]
    created_at: Mapped[CreatedAt]

    campaign: Mapped[Campaign] = relationship(back_populates="tasks")
    trajectories: Mapped[list[Trajectory]] = relationship(
        back_populates="task", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        Index(None, "campaign_id", "accepted"),
        Index(None, "domain"),
        Index(None, "created_at"),
    )


class Trajectory(Base):
    """One solver rollout of a task (sample `sample_index` of n)."""

    __tablename__ = "trajectories"

    id: Mapped[UuidPk]
    task_id: Mapped[uuid.UUID] = mapped_column(fk("tasks.id", ondelete="CASCADE"))
    # Denormalized from the task so curation filters by campaign without a join.
    campaign_id: Mapped[uuid.UUID] = mapped_column(fk("campaigns.id", ondelete="CASCADE"))
    sample_index: Mapped[int]
    model: Mapped[str]
    status: Mapped[TrajectoryStatus] = mapped_column(
        str_enum(TrajectoryStatus, "status"),
        default=TrajectoryStatus.RUNNING,
        server_default="running",
    )
    n_turns: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    n_tokens: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    final_answer: Mapped[str | None]
    # The whole conversation as the model saw it, OpenAI-style; `steps` hold it turn by turn.
    messages: Mapped[JSONListCol]
    tools: Mapped[JSONListCol]  # the function schemas the model was shown
    meta: Mapped[JSONDictCol]
    idempotency_key: Mapped[str]
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    task: Mapped[Task] = relationship(back_populates="trajectories")
    campaign: Mapped[Campaign] = relationship(back_populates="trajectories")
    steps: Mapped[list[Step]] = relationship(
        back_populates="trajectory", passive_deletes=True, order_by="Step.t"
    )
    verdicts: Mapped[list[Verdict]] = relationship(
        back_populates="trajectory", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        # Also the index for task_id lookups (leading column).
        UniqueConstraint("task_id", "sample_index"),
        CheckConstraint("sample_index >= 0", name="sample_index_nonnegative"),
        CheckConstraint("n_turns >= 0 AND n_tokens >= 0", name="counts_nonnegative"),
        Index(None, "campaign_id"),
        Index(None, "status"),
        Index(None, "created_at"),
    )


class Step(Base):
    """One turn (message) of a trajectory: role, tool call, observation, cost, checks."""

    __tablename__ = "steps"

    id: Mapped[BigIdPk]
    trajectory_id: Mapped[uuid.UUID] = mapped_column(fk("trajectories.id", ondelete="CASCADE"))
    t: Mapped[int]  # turn index within the trajectory, from 0
    role: Mapped[Role] = mapped_column(str_enum(Role, "role"))
    content: Mapped[str | None]  # message text (assistant reasoning/answer, user prompt)
    tool: Mapped[str | None]
    args: Mapped[JSONDict | None]
    observation: Mapped[str | None]
    tokens: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    latency_ms: Mapped[int | None]
    checks: Mapped[JSONDictCol]
    created_at: Mapped[CreatedAt]

    trajectory: Mapped[Trajectory] = relationship(back_populates="steps")

    __table_args__ = (
        UniqueConstraint("trajectory_id", "t"),  # also the trajectory_id index
        CheckConstraint("t >= 0", name="t_nonnegative"),
        Index(None, "tool"),
    )


class Verdict(Base):
    """A verifier's judgement of a trajectory; a new verifier version adds a row."""

    __tablename__ = "verdicts"

    id: Mapped[BigIdPk]
    trajectory_id: Mapped[uuid.UUID] = mapped_column(fk("trajectories.id", ondelete="CASCADE"))
    verifier: Mapped[str]
    verifier_version: Mapped[str]
    components: Mapped[JSONDictCol]  # named reward components
    details: Mapped[JSONDictCol]  # what the verifier said beyond numbers (a judge's raw word)
    reward: Mapped[float]
    correct: Mapped[bool]
    idempotency_key: Mapped[str]
    created_at: Mapped[CreatedAt]

    trajectory: Mapped[Trajectory] = relationship(back_populates="verdicts")

    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        Index(None, "trajectory_id"),
        Index(None, "correct"),
    )


# ---- curation ----


class Dataset(Base):
    """A versioned, SQL-defined selection of trajectories; immutable once frozen."""

    __tablename__ = "datasets"

    id: Mapped[UuidPk]
    name: Mapped[str]
    version: Mapped[int]
    sql: Mapped[str]  # the curation query that defined the selection
    row_count: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    content_hash: Mapped[str | None]  # set when frozen, over the ordered item hashes
    frozen: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[CreatedAt]
    frozen_at: Mapped[datetime | None]
    # Set when a (redeliverable) Celery task creates it: a second delivery finds the first.
    idempotency_key: Mapped[str | None]

    items: Mapped[list[DatasetItem]] = relationship(
        back_populates="dataset", passive_deletes=True, order_by="DatasetItem.position"
    )

    __table_args__ = (
        UniqueConstraint("name", "version"),
        UniqueConstraint("idempotency_key"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("row_count >= 0", name="row_count_nonnegative"),
        CheckConstraint("NOT frozen OR content_hash IS NOT NULL", name="frozen_has_hash"),
        Index(None, "content_hash"),
    )


class DatasetItem(Base):
    """One trajectory at one position of a dataset."""

    __tablename__ = "dataset_items"

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        fk("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(primary_key=True)
    # RESTRICT: a frozen dataset's trajectory must not vanish under it.
    trajectory_id: Mapped[uuid.UUID] = mapped_column(fk("trajectories.id", ondelete="RESTRICT"))
    item_hash: Mapped[str]

    dataset: Mapped[Dataset] = relationship(back_populates="items")
    trajectory: Mapped[Trajectory] = relationship()

    __table_args__ = (
        UniqueConstraint("dataset_id", "trajectory_id"),
        CheckConstraint("position >= 0", name="position_nonnegative"),
        Index(None, "trajectory_id"),
    )


# ---- training ----


class TrainingRun(Base):
    """One SFT / GRPO / distillation run; `dataset_hash` proves which data it saw."""

    __tablename__ = "training_runs"

    id: Mapped[UuidPk]
    name: Mapped[str]
    stage: Mapped[TrainingStage] = mapped_column(str_enum(TrainingStage, "stage"))
    status: Mapped[RunStatus] = mapped_column(
        str_enum(RunStatus, "status"), default=RunStatus.PENDING, server_default="pending"
    )
    # RESTRICT: a dataset a run trained on cannot be deleted.
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(fk("datasets.id", ondelete="RESTRICT"))
    dataset_hash: Mapped[str | None]
    base_model: Mapped[str]
    config: Mapped[JSONDictCol]
    checkpoint_dir: Mapped[str | None]
    idempotency_key: Mapped[str | None]  # NULLs never collide in a PG UNIQUE
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    metrics: Mapped[list[RunMetric]] = relationship(back_populates="run", passive_deletes=True)

    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        CheckConstraint("dataset_id IS NULL OR dataset_hash IS NOT NULL", name="dataset_has_hash"),
        Index(None, "dataset_id"),
        Index(None, "status"),
    )


class RunMetric(Base):
    """One scalar metric at one step of a run; re-sent values upsert on (run, name, step)."""

    __tablename__ = "run_metrics"

    id: Mapped[BigIdPk]
    run_id: Mapped[uuid.UUID] = mapped_column(fk("training_runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    name: Mapped[str]
    value: Mapped[float]
    created_at: Mapped[CreatedAt]

    run: Mapped[TrainingRun] = relationship(back_populates="metrics")

    # (run_id, name, step) is also the index for "this run's curve of this metric".
    __table_args__ = (
        UniqueConstraint("run_id", "name", "step"),
        CheckConstraint("step >= 0", name="step_nonnegative"),
    )
