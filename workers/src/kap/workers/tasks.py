"""Celery tasks of a self-play campaign: propose -> n x (solve -> verify) -> record, per item.

    kap campaign run configs/campaigns/search-small.yaml --wait   # enqueues item_chain()s
    kap worker                                                    # consumes propose/solve/verify

Each task is a small function: load by id, call the pure self-play code (proposer, solver,
verifier), persist, return a small JSON dict. Queues by name (`kap.platform.queue` routes):
propose on `propose`, solve on `solve`, verify and record on `verify`.

Reliability: every task is `acks_late` (the app's default) and idempotent — each write carries
a key derived from (campaign, position, sample), and each task first looks for its own earlier
output, so a redelivered task (a worker killed mid-task) or a re-enqueued item (the
reconciler) never duplicates a task, a trajectory, a verdict or an action record. Service
errors (PostgreSQL or Neo4j restarting, an LLM endpoint's 5xx) are retried with exponential
backoff and jitter; other errors fail the item's chain, whose errback puts the item back to
`pending` for the reconciler (or `failed` once out of attempts). Tasks never call `.get()`.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator
from typing import Any

import neo4j
import sqlalchemy as sa
from celery import chain, chord
from pydantic import ValidationError

from kap.platform.db.models import CampaignItem, ItemStatus, RunStatus, Task, Trajectory
from kap.platform.errors import ConfigError, TransientLLMError, TransientStoreError
from kap.platform.queue import app
from kap.platform.settings import Settings
from kap.workers import campaign as ledger
from kap.workers.campaign import CampaignConfig, Endpoint, LocalModel

VERIFIER, VERIFIER_VERSION = "search-rules", "1"
TRANSIENT = (
    TransientStoreError,
    TransientLLMError,
    neo4j.exceptions.ServiceUnavailable,
    neo4j.exceptions.SessionExpired,
    neo4j.exceptions.TransientError,
)
RETRY: dict[str, Any] = {
    "acks_late": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
}


# ---- per-process resources: built lazily in the pool process, never across a fork ----


@functools.cache
def settings() -> Settings:
    return Settings()


@functools.cache
def engine() -> sa.Engine:
    from kap.platform.db.session import make_engine

    return make_engine(
        settings().resolved_database_url(), pool_size=2, application_name="kap-worker"
    )


@functools.cache
def driver() -> neo4j.Driver:
    from kap.graphstore.connection import connect

    return connect(settings())


@functools.cache
def embedder() -> Any:
    from kap.graphstore.embed import Embedder

    return Embedder()  # one model per process, whatever the domains


@functools.cache
def toolset(domain: str, k: int) -> Any:
    from kap.graphstore.indexing import load_domain_index
    from kap.workers.sandbox import BubblewrapSandbox
    from kap.workers.tools import Toolset

    index = load_domain_index(settings().state_dir, domain, embedder())
    return Toolset(
        driver(),
        domain,
        index=index,
        embedder=embedder(),
        sandbox=BubblewrapSandbox(),
        database=settings().neo4j_database,
        default_k=k,
    )


@functools.cache
def client(endpoint: Endpoint) -> Any:
    from kap.platform.llm import ChatClient, EndpointConfig

    return ChatClient(EndpointConfig(endpoint.base_url, endpoint.model))


def _config(campaign_id: str) -> tuple[CampaignConfig, bool]:
    config, status = ledger.load_config(engine(), uuid.UUID(campaign_id))
    return config, status is RunStatus.CANCELLED


# ---- propose ----


def _existing_task(key: str) -> tuple[uuid.UUID, bool] | None:
    with engine().connect() as conn:
        row = conn.execute(
            sa.select(Task.id, Task.accepted).where(Task.idempotency_key == key)
        ).one_or_none()
    return None if row is None else (row.id, row.accepted)


def _fingerprints(campaign_id: str) -> set[str]:
    with engine().connect() as conn:
        found = conn.execute(
            sa.select(Task.meta["fingerprint"].astext).where(
                Task.campaign_id == uuid.UUID(campaign_id)
            )
        ).scalars()
        return {f for f in found if f}


@contextlib.contextmanager
def campaign_lock(campaign_id: str) -> Iterator[None]:
    """A PostgreSQL advisory lock per campaign: proposals of one campaign take turns, so two
    items proposed at once cannot both miss each other's fingerprint. It is a session lock on
    its own connection, so a killed worker's lock ends with its connection."""
    key = int.from_bytes(uuid.UUID(campaign_id).bytes[:8], "big", signed=True)
    with engine().connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()


@app.task(name="kap.workers.propose", **RETRY)  # type: ignore[untyped-decorator]
def propose_task(campaign_id: str, position: int) -> dict[str, Any]:
    """Propose the item's task (accepted or rejected with reasons) once; return its id."""
    out: dict[str, Any] = {"campaign_id": campaign_id, "position": position}
    config, cancelled = _config(campaign_id)
    if cancelled:
        return out | {"skip": "cancelled"}
    key = f"{campaign_id}:{position}:task"
    if (found := _existing_task(key)) is not None:
        return out | {"task_id": str(found[0]), "accepted": found[1]}
    with campaign_lock(campaign_id):
        return out | _propose_once(config, campaign_id, position, key)


def _propose_once(
    config: CampaignConfig, campaign_id: str, position: int, key: str
) -> dict[str, Any]:
    from kap.workers.proposer import LLMRewriter, propose
    from kap.workers.store import write_task

    if (found := _existing_task(key)) is not None:  # a twin delivery got here first
        return {"task_id": str(found[0]), "accepted": found[1]}
    rewriter = LLMRewriter(client(config.models.rewriter)) if config.models.rewriter else None
    seen, proposals = _fingerprints(campaign_id), []
    for attempt in range(5):  # a near-duplicate of an earlier task: the next seed
        seed = (config.seed * 1_000_003 + position) * 31 + attempt
        proposals = propose(
            driver(),
            config.domain,
            hops=config.hops,
            n=1,
            seed=seed,
            prefer_unexplored=config.prefer_unexplored,
            seen=seen,
            rewriter=rewriter,
            database=settings().neo4j_database,
        )
        if proposals:
            break
    if not proposals:
        ledger.finish_item(
            engine(),
            uuid.UUID(campaign_id),
            position,
            ItemStatus.REJECTED,
            error="no new chain: every sample duplicated an earlier task",
        )
        return {"accepted": False}
    p = proposals[0]
    task_id = write_task(
        engine(),
        uuid.UUID(campaign_id),
        domain=p.domain,
        kind=p.kind,
        question=p.question,
        gold_answer=p.gold_answer,
        aliases=p.aliases,
        evidence=p.evidence,
        hops=p.hops,
        region=p.region,
        accepted=p.accepted,
        idempotency_key=key,
        criteria={n: {"passed": c.passed, "reason": c.reason} for n, c in p.criteria.items()},
        meta={"fingerprint": p.fingerprint, "position": position},
    )
    if not p.accepted:
        ledger.finish_item(
            engine(), uuid.UUID(campaign_id), position, ItemStatus.REJECTED, task_id=task_id
        )
    return {"task_id": str(task_id), "accepted": p.accepted}


# ---- solve ----


@functools.cache
def _local(model: LocalModel) -> Any:
    from kap.workers.local_policy import TransformersPolicy

    return TransformersPolicy(model.path, max_new_tokens=model.max_new_tokens,
                              temperature=model.temperature, device=model.device)  # fmt: skip


def _policy(config: CampaignConfig) -> Any:
    from kap.workers.policy import HttpPolicy
    from kap.workers.scripted_policy import ScriptedPolicy

    solver = config.models.solver
    if solver == "scripted":
        return ScriptedPolicy(k=config.search_k)
    if isinstance(solver, LocalModel):
        return _local(solver)  # loaded once per worker process
    return HttpPolicy(client(solver))


def _model_name(config: CampaignConfig) -> str:
    solver = config.models.solver
    if isinstance(solver, LocalModel):
        return solver.path
    return solver if isinstance(solver, str) else solver.model


@app.task(name="kap.workers.solve", **RETRY)  # type: ignore[untyped-decorator]
def solve_task(proposed: dict[str, Any], sample_index: int) -> dict[str, Any]:
    """Run the solver once on the item's task and store the trajectory (once)."""
    from kap.workers.solver import SolverConfig, solve
    from kap.workers.store import write_trajectory

    if proposed.get("skip") or not proposed.get("accepted"):
        return proposed | {"skip": proposed.get("skip", "rejected")}
    campaign_id, task_id = proposed["campaign_id"], uuid.UUID(proposed["task_id"])
    key = f"{campaign_id}:{proposed['position']}:{sample_index}:trajectory"
    with engine().connect() as conn:
        existing = conn.scalar(sa.select(Trajectory.id).where(Trajectory.idempotency_key == key))
        question = conn.scalar(sa.select(Task.question).where(Task.id == task_id))
    if existing is not None:
        return proposed | {"trajectory_id": str(existing)}
    config, cancelled = _config(campaign_id)
    if cancelled:
        return proposed | {"skip": "cancelled"}
    tools = toolset(config.domain, config.search_k)
    result = solve(
        str(question), _policy(config), tools, SolverConfig(max_turns=config.turn_budget)
    )
    trajectory_id = write_trajectory(
        engine(),
        task_id=task_id,
        campaign_id=uuid.UUID(campaign_id),
        sample_index=sample_index,
        model=_model_name(config),
        result=result,
        tools=tools.schemas,
        idempotency_key=key,
    )
    return proposed | {"trajectory_id": str(trajectory_id)}


# ---- verify ----


@app.task(name="kap.workers.verify", **RETRY)  # type: ignore[untyped-decorator]
def verify_task(solved: dict[str, Any]) -> dict[str, Any]:
    """Judge a stored trajectory, store the verdict, write its action records to the graph."""
    from kap.workers.judging import judge_trajectory

    if solved.get("skip"):
        return solved
    config, _ = _config(solved["campaign_id"])
    judge = None
    if config.models.judge is not None:
        from kap.workers.verifier import ChatJudge

        judge = ChatJudge(client(config.models.judge))
    outcome = judge_trajectory(
        engine(),
        driver(),
        uuid.UUID(solved["trajectory_id"]),
        config,
        verifier=VERIFIER,
        version=VERIFIER_VERSION,
        judge=judge,
        database=settings().neo4j_database,
    )
    return solved | outcome


# ---- record, and the item's error path ----


@app.task(name="kap.workers.record", **RETRY)  # type: ignore[untyped-decorator]
def record_task(verified: list[dict[str, Any]], campaign_id: str, position: int) -> dict[str, Any]:
    """All samples verified: the item is done (a rejected or cancelled one stays as it is)."""
    task_ids = {v["task_id"] for v in verified if v.get("task_id")}
    task_id = uuid.UUID(task_ids.pop()) if task_ids else None
    ledger.finish_item(engine(), uuid.UUID(campaign_id), position, ItemStatus.DONE, task_id=task_id)
    accepted = sum(1 for v in verified if v.get("accepted_trajectory"))
    return {"campaign_id": campaign_id, "position": position, "accepted_trajectories": accepted}


@app.task(name="kap.workers.item_failed", acks_late=True)  # type: ignore[untyped-decorator]
def item_failed_task(campaign_id: str, position: int) -> None:
    """Errback of an item's chain: back to pending for the reconciler while attempts remain."""
    config, _ = _config(campaign_id)
    with engine().begin() as conn:
        conn.execute(
            sa.update(CampaignItem)
            .where(
                CampaignItem.campaign_id == uuid.UUID(campaign_id),
                CampaignItem.position == position,
                CampaignItem.status == ItemStatus.QUEUED,
            )
            .values(
                status=sa.case(
                    (CampaignItem.attempts >= config.max_attempts, ItemStatus.FAILED.value),
                    else_=ItemStatus.PENDING.value,
                ),
                error="a task of the item failed (see the worker log)",
                updated_at=sa.func.now(),
            )
        )


# ---- the canvas ----


def item_chain(campaign_id: str, position: int, samples: int) -> Any:
    """propose -> chord(n x (solve -> verify)) -> record, with the item's errback."""
    header = [chain(solve_task.s(i), verify_task.s()) for i in range(samples)]
    flow = chain(
        propose_task.si(campaign_id, position), chord(header, record_task.s(campaign_id, position))
    )
    return flow.on_error(item_failed_task.si(campaign_id, position))


def enqueue_due(engine_: sa.Engine, campaign_id: uuid.UUID) -> list[int]:
    """The reconciler's step: claim due items in the ledger, then send their chains."""
    config, status = ledger.load_config(engine_, campaign_id)
    if status is RunStatus.CANCELLED:
        return []
    positions = ledger.claim_due_items(engine_, campaign_id, config)
    for position in positions:
        item_chain(str(campaign_id), position, config.samples_per_task).apply_async()
    return positions


# ---- campaigns launched and cancelled from the explorer ----


# Not idempotent (each call is a new campaign), so acknowledged on receipt, not after: a worker
# lost mid-launch loses the launch (the explorer reports no answer) rather than making two.
@app.task(name="kap.workers.launch_campaign", acks_late=False)  # type: ignore[untyped-decorator]
def launch_campaign_task(config: dict[str, Any]) -> str:
    """`kap campaign run CONFIG` without --wait, for the explorer (which holds no write role):
    validate the config, write the campaign and its ledger, enqueue every item; its id."""
    try:
        parsed = CampaignConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"campaign config: {where}: {first['msg']}") from None
    campaign_id = ledger.create_campaign(engine(), parsed)
    enqueue_due(engine(), campaign_id)
    return str(campaign_id)


@app.task(name="kap.workers.cancel_campaign", acks_late=True)  # type: ignore[untyped-decorator]
def cancel_campaign_task(campaign_id: str) -> int:
    """`kap campaign cancel ID` for the explorer: how many open items were cancelled."""
    try:
        cid = uuid.UUID(campaign_id)
    except ValueError:
        raise ConfigError(f"{campaign_id!r} is not a campaign id (a UUID)") from None
    return ledger.cancel_campaign(engine(), cid)
