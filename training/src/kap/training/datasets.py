"""Frozen dataset snapshots from the trajectory store, as conversations the trainers read.

    snapshot = load_snapshot(engine, "search-v1@2")   # or a dataset id, or a name (newest)
    train_sft(config, snapshot.conversations, recorder)

A snapshot is a `datasets` row with `frozen` set and its `dataset_items` in position order, each
naming a trajectory. Only frozen datasets are read: a training run records the dataset id and
its `content_hash`, which proves the exact trajectories it saw, so reading a dataset that can
still change would make that proof worthless.

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
  latest call that has no answer yet.
The conversation's domain is its task's, its id the trajectory id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from kap.platform.db.models import Dataset, DatasetItem, Role, Step, Task, Trajectory
from kap.training.chat import Conversation, Message, validate_messages
from kap.training.errors import TrainingError


class DatasetError(TrainingError):
    """A dataset is unknown, not frozen, or one of its trajectories cannot become a conversation."""


@dataclass(frozen=True)
class Snapshot:
    """A frozen dataset, read whole."""

    id: uuid.UUID
    name: str
    version: int
    content_hash: str
    conversations: list[Conversation]


def _find(session: Session, ref: str | uuid.UUID) -> Dataset:
    """By id, by `name@version`, or by name (its newest frozen version)."""
    query = sa.select(Dataset)
    if isinstance(ref, uuid.UUID):
        found = session.get(Dataset, ref)
    else:
        try:
            found = session.get(Dataset, uuid.UUID(ref))
        except ValueError:
            name, _, version = ref.partition("@")
            if version:
                if not version.isdigit():
                    raise DatasetError(f"dataset {ref!r}: version must be a number") from None
                query = query.where(Dataset.name == name, Dataset.version == int(version))
            else:
                query = query.where(Dataset.name == name, Dataset.frozen)
            found = session.scalars(query.order_by(Dataset.version.desc()).limit(1)).first()
    if found is None:
        raise DatasetError(f"no dataset {str(ref)!r} (give an id, a name, or name@version)")
    if not found.frozen or found.content_hash is None:
        raise DatasetError(
            f"dataset {found.name}@{found.version} is not frozen: only frozen snapshots "
            "are trained on (their content hash is what the run records)"
        )
    return found


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
                raise DatasetError(f"step t={step.t}: a tool result with no tool call before it")
            content = step.observation if step.observation is not None else step.content
            messages.append(
                {"role": "tool", "tool_call_id": unanswered.pop(0), "content": content or ""}
            )
    return messages


def _conversation(trajectory: Trajectory, domain: str, steps: Sequence[Step]) -> Conversation:
    messages = list(trajectory.messages) or messages_from_steps(steps)
    tools = list(trajectory.tools) or None
    try:
        validate_messages(messages, tools)
    except TrainingError as exc:
        raise DatasetError(f"trajectory {trajectory.id}: {exc}") from exc
    return Conversation(messages=messages, tools=tools, domain=domain, id=str(trajectory.id))


def load_snapshot(engine: sa.Engine, ref: str | uuid.UUID) -> Snapshot:
    """The conversations of a frozen dataset, in item order (one query for all their steps)."""
    with Session(engine) as session:
        dataset = _find(session, ref)
        rows = session.execute(
            sa.select(Trajectory, Task.domain)
            .join(DatasetItem, DatasetItem.trajectory_id == Trajectory.id)
            .join(Task, Task.id == Trajectory.task_id)
            .where(DatasetItem.dataset_id == dataset.id)
            .order_by(DatasetItem.position)
        ).all()
        ids = [trajectory.id for trajectory, _ in rows]
        steps: dict[uuid.UUID, list[Step]] = {i: [] for i in ids}
        for step in session.scalars(
            sa.select(Step).where(Step.trajectory_id.in_(ids)).order_by(Step.trajectory_id, Step.t)
        ):
            steps[step.trajectory_id].append(step)
        conversations = [_conversation(tr, domain, steps[tr.id]) for tr, domain in rows]
        if len(conversations) != dataset.row_count:
            raise DatasetError(
                f"dataset {dataset.name}@{dataset.version} records {dataset.row_count} items "
                f"but {len(conversations)} are stored"
            )
        assert dataset.content_hash is not None  # checked by _find
        return Snapshot(
            dataset.id, dataset.name, dataset.version, dataset.content_hash, conversations
        )
