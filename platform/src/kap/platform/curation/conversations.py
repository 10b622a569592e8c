"""A trajectory as a training conversation: what a dataset item holds, hashes and exports.

A trajectory's conversation is its `messages` column (the OpenAI-style messages the solver
wrote) with its `tools`; a trajectory stored without them is rebuilt from its `steps` rows in
`t` order:
- `system` / `user` steps: `{"role", "content"}`;
- an `assistant` step: `{"role": "assistant", "content"}`, with, when it names a `tool`, one
  tool call `{"id": "call_<t>", "type": "function", "function": {"name": tool, "arguments":
  JSON of args}}`; a non-null `observation` on that step is the tool's answer and follows as
  `{"role": "tool", "tool_call_id": "call_<t>", "content": observation}` (the (a_t, o_t) of one
  self-play step);
- a `tool` step (an observation written as a row of its own): a tool message answering the
  oldest call that has no answer yet.

`records` streams a dataset's items as export records, a bounded batch of trajectories at a
time; `item_hash` is the sha256 of a record's content (ids, domain, messages, tools), so a
dataset's content hash changes exactly when what a model would be trained on changes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from kap.platform.db.models import Role, Step, Task, Trajectory
from kap.platform.errors import CurationError

Message = dict[str, Any]
BATCH = 200  # trajectories read per query when streaming a dataset


def _call(t: int, tool: str, args: dict[str, Any] | None) -> dict[str, Any]:
    arguments = json.dumps(args or {}, ensure_ascii=False)
    return {
        "id": f"call_{t}",
        "type": "function",
        "function": {"name": tool, "arguments": arguments},
    }


def messages_from_steps(steps: Sequence[Step]) -> list[Message]:
    """The conversation a trajectory's steps record (the rules are in the module docstring)."""
    messages: list[Message] = []
    unanswered: list[str] = []  # ids of tool calls without a tool message yet
    for step in sorted(steps, key=lambda s: s.t):
        if step.role in (Role.SYSTEM, Role.USER):
            messages.append({"role": step.role.value, "content": step.content or ""})
        elif step.role is Role.ASSISTANT:
            message: Message = {"role": "assistant", "content": step.content}
            if step.tool:
                call = _call(step.t, step.tool, step.args)
                message["tool_calls"] = [call]
                unanswered.append(call["id"])
            messages.append(message)
            if step.tool and step.observation is not None:
                messages.append(
                    {"role": "tool", "tool_call_id": unanswered.pop(), "content": step.observation}
                )
        else:  # a tool row: the observation of the oldest unanswered call
            if not unanswered:
                raise CurationError(f"step t={step.t}: a tool result with no tool call before it")
            content = step.observation if step.observation is not None else step.content
            messages.append(
                {"role": "tool", "tool_call_id": unanswered.pop(0), "content": content or ""}
            )
    return messages


def record_of(trajectory: Trajectory, task: Task, steps: Sequence[Step]) -> dict[str, Any]:
    """One export record: the conversation, its domain, and the ids back to the store."""
    try:
        messages = list(trajectory.messages) or messages_from_steps(steps)
    except CurationError as exc:
        raise CurationError(f"trajectory {trajectory.id}: {exc}") from exc
    return {
        "id": str(trajectory.id),
        "domain": task.domain,
        "messages": messages,
        "tools": list(trajectory.tools) or None,
        "trajectory_id": str(trajectory.id),
        "task_id": str(task.id),
        "campaign_id": str(trajectory.campaign_id),
    }


def item_hash(record: dict[str, Any]) -> str:
    """sha256 over the record's content in canonical JSON (sorted keys, no spaces)."""
    content = {k: record[k] for k in ("trajectory_id", "domain", "messages", "tools")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def content_hash(item_hashes: Iterable[str]) -> str:
    """sha256 over the ordered item hashes: the same trajectories in the same order, same hash."""
    digest = hashlib.sha256()
    for position, value in enumerate(item_hashes):
        digest.update(f"{position}:{value}\n".encode())
    return digest.hexdigest()


def records(session: Session, trajectory_ids: Sequence[uuid.UUID]) -> Iterator[dict[str, Any]]:
    """Export records of `trajectory_ids` in that order, `BATCH` trajectories per query."""
    for start in range(0, len(trajectory_ids), BATCH):
        batch = list(trajectory_ids[start : start + BATCH])
        rows = session.execute(
            sa.select(Trajectory, Task)
            .join(Task, Task.id == Trajectory.task_id)
            .where(Trajectory.id.in_(batch))
        ).all()
        found = {trajectory.id: (trajectory, task) for trajectory, task in rows}
        missing = [str(i) for i in batch if i not in found]
        if missing:
            raise CurationError(f"no trajectory {missing[0]} (and {len(missing) - 1} more)")
        # Steps only for trajectories stored without their messages (older writers).
        bare = [i for i in batch if not found[i][0].messages]
        steps: dict[uuid.UUID, list[Step]] = {i: [] for i in bare}
        if bare:
            query = sa.select(Step).where(Step.trajectory_id.in_(bare)).order_by(Step.t)
            for step in session.scalars(query):
                steps[step.trajectory_id].append(step)
        for i in batch:
            trajectory, task = found[i]
            yield record_of(trajectory, task, steps.get(i, []))
        session.expunge_all()  # keep memory bounded across batches
