"""Campaigns: the config file, the ledger in PostgreSQL, and the reconciler.

    config = CampaignConfig.from_yaml("configs/campaigns/search-small.yaml")
    campaign_id = create_campaign(engine, config)        # the row and one ledger item per task
    due = claim_due_items(engine, campaign_id, config)   # what to (re-)enqueue now

A campaign is a row in `campaigns` (its config kept whole as JSON) and one `campaign_items` row
per task slot, all written in one transaction before anything is enqueued, so a crash between
the two leaves no work that the ledger does not know of. An item is `pending` until its chain
is sent (`queued`, `attempts` + 1), then `done` or `rejected` (the proposal failed a criterion
or duplicated another task: the task row keeps its reasons), or `failed` once the reconciler
has given up on it after `max_attempts`. The reconciler (`claim_due_items`) hands out pending
items and items `queued` for longer than `stuck_after_s` without finishing (a lost message, a
worker killed before it could requeue its task); every write downstream is idempotent, so a
re-enqueued item never duplicates a task, a trajectory or a verdict.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.dialects.postgresql import JSONB

from kap.platform.db.models import (
    Campaign,
    CampaignItem,
    ItemStatus,
    RunStatus,
    Task,
    Trajectory,
    Verdict,
)
from kap.platform.errors import ConfigError

# ---- the config file ----


class Endpoint(BaseModel):
    """An OpenAI-compatible endpoint (what vLLM serves)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_url: str
    model: str


class LocalModel(BaseModel):
    """A local checkpoint directory run in the worker with transformers (small models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    device: str = "cpu"
    max_new_tokens: Annotated[int, Field(ge=1)] = 512
    temperature: Annotated[float, Field(ge=0)] = 0.0


class Models(BaseModel):
    """Who plays each role: the scripted baseline, a model behind an endpoint, or a local one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    solver: Literal["scripted"] | Endpoint | LocalModel = "scripted"
    rewriter: Endpoint | None = None  # fluent rewrites of proposed questions
    judge: Endpoint | None = None  # an LLM judge of answer correctness


class Acceptance(BaseModel):
    """When a verified trajectory counts as accepted (training-worthy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    require_correct: bool = True
    require_evidence: bool = False  # every hop's evidence read
    min_reward: float = 0.0


class CampaignConfig(BaseModel):
    """One campaign, as `configs/campaigns/*.yaml` spells it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    tasks: Annotated[int, Field(ge=1, le=100_000)]
    hops: Annotated[int, Field(ge=2, le=4)] = 2
    samples_per_task: Annotated[int, Field(ge=1, le=64)] = 1
    turn_budget: Annotated[int, Field(ge=1, le=300)] = 300
    search_k: Annotated[int, Field(ge=1, le=20)] = 5
    prefer_unexplored: bool = True
    models: Models = Models()
    acceptance: Acceptance = Acceptance()
    seed: int = 0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3  # enqueues per item, first included
    stuck_after_s: Annotated[float, Field(gt=0)] = 900.0  # queued this long: re-enqueue

    @classmethod
    def from_yaml(cls, path: str | Path) -> CampaignConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the campaign config: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "config"
            raise ConfigError(f"{path}: {where}: {first['msg']}") from None


# ---- the ledger ----


def create_campaign(engine: sa.Engine, config: CampaignConfig) -> uuid.UUID:
    """The campaign row and its `tasks` pending items, in one transaction."""
    campaign_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Campaign).values(
                id=campaign_id,
                name=config.name,
                config=config.model_dump(mode="json"),
                domains=[config.domain],
                status=RunStatus.PENDING,
            )
        )
        conn.execute(
            sa.insert(CampaignItem),
            [{"campaign_id": campaign_id, "position": i} for i in range(config.tasks)],
        )
    return campaign_id


def load_config(engine: sa.Engine, campaign_id: uuid.UUID) -> tuple[CampaignConfig, RunStatus]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(Campaign.config, Campaign.status).where(Campaign.id == campaign_id)
        ).one_or_none()
    if row is None:
        raise ConfigError(f"no campaign {campaign_id}")
    return CampaignConfig.model_validate(row.config), RunStatus(row.status)


def claim_due_items(
    engine: sa.Engine,
    campaign_id: uuid.UUID,
    config: CampaignConfig,
    *,
    now: dt.datetime | None = None,
) -> list[int]:
    """Positions to enqueue now, marked queued (attempts + 1) in the same statement; items out of
    attempts are marked failed. Concurrent reconcilers never claim the same item twice."""
    now = now or dt.datetime.now(dt.UTC)
    stuck = now - dt.timedelta(seconds=config.stuck_after_s)
    due = sa.and_(
        CampaignItem.campaign_id == campaign_id,
        sa.or_(
            CampaignItem.status == ItemStatus.PENDING,
            sa.and_(CampaignItem.status == ItemStatus.QUEUED, CampaignItem.updated_at < stuck),
        ),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.update(CampaignItem)
            .where(due, CampaignItem.attempts >= config.max_attempts)
            .values(
                status=ItemStatus.FAILED,
                updated_at=now,
                error=f"gave up after {config.max_attempts} attempts",
            )
        )
        claim = (
            sa.select(CampaignItem.id)
            .where(due, CampaignItem.attempts < config.max_attempts)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(
            sa.update(CampaignItem)
            .where(CampaignItem.id.in_(claim.scalar_subquery()))
            .values(status=ItemStatus.QUEUED, attempts=CampaignItem.attempts + 1, updated_at=now)
            .returning(CampaignItem.position)
        ).scalars()
        positions = sorted(rows)
        if positions:
            conn.execute(
                sa.update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status == RunStatus.PENDING)
                .values(status=RunStatus.RUNNING, started_at=sa.func.now())
            )
    return positions


def finish_item(
    engine: sa.Engine,
    campaign_id: uuid.UUID,
    position: int,
    status: ItemStatus,
    *,
    task_id: uuid.UUID | None = None,
    error: str | None = None,
) -> None:
    """Mark an item done / rejected (idempotent); close the campaign when none is left open."""
    open_states = (ItemStatus.PENDING, ItemStatus.QUEUED)
    with engine.begin() as conn:
        # The campaign row's lock serializes finishers: without it, the last two to finish
        # each see the other still open and neither closes the campaign.
        conn.execute(sa.select(Campaign.id).where(Campaign.id == campaign_id).with_for_update())
        values: dict[str, Any] = {"status": status, "updated_at": sa.func.now(), "error": error}
        if task_id is not None:
            values["task_id"] = task_id
        conn.execute(
            sa.update(CampaignItem)
            .where(
                CampaignItem.campaign_id == campaign_id,
                CampaignItem.position == position,
                CampaignItem.status.in_(open_states),
            )
            .values(**values)
        )
        left = conn.scalar(
            sa.select(sa.func.count())
            .select_from(CampaignItem)
            .where(CampaignItem.campaign_id == campaign_id, CampaignItem.status.in_(open_states))
        )
        if left == 0:
            conn.execute(
                sa.update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status == RunStatus.RUNNING)
                .values(status=RunStatus.SUCCEEDED, finished_at=sa.func.now())
            )


def cancel_campaign(engine: sa.Engine, campaign_id: uuid.UUID) -> int:
    """Cancel the campaign and its open items; queued work finds it cancelled and stops."""
    with engine.begin() as conn:
        found = conn.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status=RunStatus.CANCELLED, finished_at=sa.func.now())
            .returning(Campaign.id)
        ).first()
        if found is None:
            raise ConfigError(f"no campaign {campaign_id}")
        result = conn.execute(
            sa.update(CampaignItem)
            .where(
                CampaignItem.campaign_id == campaign_id,
                CampaignItem.status.in_((ItemStatus.PENDING, ItemStatus.QUEUED)),
            )
            .values(status=ItemStatus.CANCELLED, updated_at=sa.func.now())
        )
    return int(result.rowcount)


def reopen_campaign(engine: sa.Engine, campaign_id: uuid.UUID) -> int:
    """`resume`: cancelled and failed items go back to pending, with fresh attempts."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(CampaignItem)
            .where(
                CampaignItem.campaign_id == campaign_id,
                CampaignItem.status.in_((ItemStatus.CANCELLED, ItemStatus.FAILED)),
            )
            .values(status=ItemStatus.PENDING, attempts=0, error=None, updated_at=sa.func.now())
        )
        conn.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status=RunStatus.RUNNING, finished_at=None)
        )
    return int(result.rowcount)


def campaign_status(engine: sa.Engine, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Counts by item status, tasks accepted/rejected with reasons, judged trajectories, and
    the pass rate over their verdicts."""
    with engine.connect() as conn:
        head = conn.execute(
            sa.select(Campaign.name, Campaign.status).where(Campaign.id == campaign_id)
        ).one_or_none()
        if head is None:
            raise ConfigError(f"no campaign {campaign_id}")
        items = dict(
            conn.execute(
                sa.select(CampaignItem.status, sa.func.count())
                .where(CampaignItem.campaign_id == campaign_id)
                .group_by(CampaignItem.status)
            ).all()
        )
        # Aggregated in SQL: `status --wait` runs this every poll, whatever the campaign's size.
        accepted, rejected = conn.execute(
            sa.select(
                sa.func.count().filter(Task.accepted), sa.func.count().filter(~Task.accepted)
            ).where(Task.campaign_id == campaign_id)
        ).one()
        criterion = sa.func.jsonb_each(Task.criteria).table_valued(
            sa.column("key", sa.Text), sa.column("value", JSONB)
        )
        reasons: dict[str, int] = dict(
            conn.execute(
                sa.select(criterion.c.key, sa.func.count())
                .select_from(Task)
                .join(criterion, sa.true())
                .where(
                    Task.campaign_id == campaign_id,
                    criterion.c.value["passed"].as_boolean().is_(False),
                )
                .group_by(criterion.c.key)
            ).all()
        )
        judged, pass_rate = conn.execute(
            sa.select(
                sa.func.count(sa.distinct(Verdict.trajectory_id)),
                sa.func.coalesce(sa.func.avg(sa.cast(Verdict.correct, sa.Integer)), 0.0),
            )
            .join(Trajectory, Trajectory.id == Verdict.trajectory_id)
            .where(Trajectory.campaign_id == campaign_id)
        ).one()
    total = sum(items.values())
    finished = sum(
        items.get(s, 0)
        for s in (ItemStatus.DONE, ItemStatus.REJECTED, ItemStatus.FAILED, ItemStatus.CANCELLED)
    )
    return {
        "campaign_id": str(campaign_id),
        "name": head.name,
        "status": str(head.status),
        "items": {str(s): items.get(s, 0) for s in ItemStatus},
        "total": total,
        "finished": finished,
        "tasks_accepted": accepted,
        "tasks_rejected": rejected,
        "rejection_reasons": reasons,
        "trajectories": judged,
        "pass_rate": float(pass_rate),
    }
