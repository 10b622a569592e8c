"""Judging stored trajectories: the verify step of a campaign and `kap campaign reverify`.

A trajectory is judged from what the store holds (its answer, what it read, its task's gold
answer, aliases and per-hop evidence), never by running the solver again, so a new verifier
version can re-judge a whole campaign: each (verifier, version) adds its own verdict row,
keyed `<trajectory>:verdict:<verifier>:<version>`, and judging twice writes nothing new.
The campaign's verify step also writes the trajectory's action records into the graph.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import neo4j
import sqlalchemy as sa

from kap.platform.db.models import Step, Task, Trajectory
from kap.workers.campaign import Acceptance, CampaignConfig
from kap.workers.solver import SolveResult, StepRecord, StopReason
from kap.workers.store import write_verdict
from kap.workers.verifier import Gold, Judge, Verdict, verify


def _step(row: Mapping[Any, Any]) -> StepRecord:
    """A stored `steps` row back as the solver's record (layout: kap.workers.store)."""
    checks = dict(row["checks"] or {})
    state = checks.pop("state", {})
    calls = checks.pop("calls", [])
    text = row["observation"] or ""
    observations = [
        {
            **{k: v for k, v in o.items() if k not in ("start", "end")},
            "content": text[o["start"] : o["end"]],
        }
        for o in checks.pop("observations", [])
    ]
    # By key: on a Row, `.t` is SQLAlchemy's typed-tuple accessor, not the column `t`.
    return StepRecord(
        row["t"],
        int(state.get("prompt_tokens", 0)),
        str(state.get("prompt_hash", "")),
        int(state.get("folded_turns", 0)),
        None,
        row["content"] or "",
        calls,
        observations,
        {k: bool(v) for k, v in checks.items()},
        row["tokens"],
        (row["latency_ms"] or 0) / 1000,
    )


def stored_result(conn: sa.Connection, trajectory_id: uuid.UUID) -> tuple[SolveResult, Any]:
    """The solver's result as stored, and the trajectory's task row."""
    trajectory = conn.execute(
        sa.select(Trajectory).where(Trajectory.id == trajectory_id)
    ).one_or_none()
    if trajectory is None:
        raise LookupError(f"no trajectory {trajectory_id}")
    task = conn.execute(sa.select(Task).where(Task.id == trajectory.task_id)).one()
    steps = (
        conn.execute(sa.select(Step).where(Step.trajectory_id == trajectory_id).order_by(Step.t))
        .mappings()
        .all()
    )
    meta = trajectory.meta or {}
    result = SolveResult(
        list(trajectory.messages),
        [_step(s) for s in steps],
        trajectory.final_answer,
        StopReason(meta.get("stop_reason", StopReason.TURN_BUDGET.value)),
        list(meta.get("read_chunk_ids", [])),
        list(meta.get("seen_chunk_ids", [])),
        int(meta.get("prompt_tokens", 0)),
        int(meta.get("completion_tokens", 0)),
        meta.get("error"),
    )
    return result, task


def accepted(rules: Acceptance, verdict: Verdict) -> bool:
    """Whether a judged trajectory is training-worthy under the campaign's acceptance rules."""
    return (
        (verdict.correct or not rules.require_correct)
        and (bool(verdict.components.get("all_hops_supported")) or not rules.require_evidence)
        and verdict.reward >= rules.min_reward
    )


def judge_trajectory(
    engine: sa.Engine,
    driver: neo4j.Driver | None,
    trajectory_id: uuid.UUID,
    config: CampaignConfig,
    *,
    verifier: str,
    version: str,
    judge: Judge | None = None,
    database: str = "neo4j",
) -> dict[str, Any]:
    """Verify one stored trajectory, store the verdict (once), and, with a driver, write its
    action records into the graph (once)."""
    with engine.connect() as conn:
        result, task = stored_result(conn, trajectory_id)
    gold = Gold(
        task.question,
        task.gold_answer,
        tuple(task.aliases),
        tuple(frozenset(hop) for hop in task.evidence),
    )
    verdict = verify(
        gold,
        result.answer,
        answered=result.stop_reason is StopReason.ANSWERED,
        read_chunk_ids=set(result.read_chunk_ids),
        judge=judge,
    )
    key = f"{trajectory_id}:verdict:{verifier}:{version}"
    verdict_id = write_verdict(
        engine, trajectory_id, verdict, verifier=verifier, version=version, idempotency_key=key
    )
    if driver is not None:
        from kap.workers.actions import record_actions

        entities = sorted(
            {h[k] for h in task.hops for k in ("subject_id", "object_id") if h.get(k)}
        )
        record_actions(
            driver,
            task.domain,
            trajectory_id=str(trajectory_id),
            result=result,
            verdict=verdict,
            verifier=verifier,
            evidence_entity_ids=entities,
            database=database,
        )
    return {
        "verdict_id": verdict_id,
        "correct": verdict.correct,
        "reward": verdict.reward,
        "accepted_trajectory": accepted(config.acceptance, verdict),
    }


def judge_campaign(
    engine: sa.Engine,
    campaign_id: uuid.UUID,
    config: CampaignConfig,
    *,
    verifier: str,
    version: str,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Re-judge every stored trajectory of a campaign. No action records: the solver's actions
    were recorded when they happened, and nothing new was done."""
    with engine.connect() as conn:
        ids = (
            conn.execute(sa.select(Trajectory.id).where(Trajectory.campaign_id == campaign_id))
            .scalars()
            .all()
        )
    outcomes = [
        judge_trajectory(engine, None, tid, config, verifier=verifier, version=version, judge=judge)
        for tid in ids
    ]
    n = len(outcomes)
    return {
        "trajectories": n,
        "verifier": verifier,
        "version": version,
        "correct": sum(o["correct"] for o in outcomes),
        "accepted": sum(o["accepted_trajectory"] for o in outcomes),
        "pass_rate": sum(o["correct"] for o in outcomes) / n if n else 0.0,
    }
