"""The solver: an agent loop over OpenAI-style messages with tool calls.

    result = solve("Who founded ...?", policy, toolset, SolverConfig(max_turns=300))

One turn = one policy call: the prompt goes in, an assistant message comes out, each of its
tool calls runs through the toolset and its observation is appended as a `tool` message. The
episode ends when the `answer` tool is called, at the turn budget, when the policy fails, or
after `max_idle` turns in a row without a tool call (each one answered with a reminder).

Tokens are counted as ceil(characters / 4) of each message's content and tool-call text: a
model-independent estimate (close to BPE tokenizers on English), cheap enough for every turn.

Context folding: when the prompt passes `context_budget` tokens, the oldest turns (an
assistant message with its tool results) are replaced in the PROMPT by one summary message
(per turn: the call and the head of its observation); the newest `keep_recent` turns stay
verbatim. The record (`SolveResult.messages`) always keeps every message whole.

Each turn leaves a `StepRecord`: s_t (prompt size, hash and the last observation it saw),
a_t (the tool calls), o_t (the observations), v_t (checks: malformed, error, repeat, idle).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from kap.platform.errors import LLMError
from kap.workers.policy import Message, Policy
from kap.workers.tools import ErrorKind, Observation

SYSTEM_PROMPT = (
    "You answer questions by researching a knowledge base with tools. Search for evidence, "
    "visit the passages you need, follow entity relations with graph, and use python for "
    "arithmetic. Every claim must come from what you read. When you know the answer, call "
    "answer with the shortest exact answer."
)
NUDGE = "Continue with a tool call; call `answer` when you know the answer."


class Tools(Protocol):
    @property
    def schemas(self) -> list[dict[str, Any]]: ...

    def execute(self, call: dict[str, Any]) -> Observation: ...


@dataclass(frozen=True)
class SolverConfig:
    max_turns: int = 300  # policy calls per episode
    context_budget: int = 24_000  # prompt tokens (chars/4) before older turns are folded
    keep_recent: int = 6  # turns always kept verbatim in the prompt
    summary_chars: int = 160  # head of each folded observation kept in the summary
    max_idle: int = 3  # turns in a row without a tool call before the episode stops
    system_prompt: str = SYSTEM_PROMPT


class StopReason(StrEnum):
    ANSWERED = "answered"
    TURN_BUDGET = "turn_budget"
    IDLE = "no_tool_call"
    POLICY_ERROR = "policy_error"


@dataclass(frozen=True)
class StepRecord:
    t: int
    prompt_tokens: int  # s_t: what it saw
    prompt_hash: str
    folded_turns: int
    last_observation: str | None
    content: str  # a_t: what it said and called
    tool_calls: list[dict[str, Any]]
    observations: list[dict[str, Any]]  # o_t
    checks: dict[str, bool]  # v_t
    completion_tokens: int
    latency_s: float


@dataclass
class SolveResult:
    messages: list[Message]
    steps: list[StepRecord]
    answer: str | None
    stop_reason: StopReason
    read_chunk_ids: list[str] = field(default_factory=list)
    seen_chunk_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0  # summed over turns (what the policy was sent)
    completion_tokens: int = 0
    error: str | None = None

    @property
    def turns(self) -> int:
        return len(self.steps)

    @property
    def answered(self) -> bool:
        return self.stop_reason is StopReason.ANSWERED


def count_tokens(messages: Sequence[Message]) -> int:
    """ceil(chars / 4) over contents and tool-call names and arguments."""
    chars = 0
    for m in messages:
        chars += len(str(m.get("content") or ""))
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return -(-chars // 4)


def _turns(body: list[Message]) -> list[list[Message]]:
    """Split the messages after the question into turns, each starting at an assistant one."""
    turns: list[list[Message]] = []
    for m in body:
        if m.get("role") == "assistant" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


def _summary(turns: list[list[Message]], head: int, max_chars: int) -> Message:
    """One message for the folded turns: per turn its calls and the head of each observation;
    past `max_chars`, the oldest turns' lines are dropped (and counted) so it stays bounded."""
    blocks: list[str] = []
    for turn in turns:
        lines = []
        for call in turn[0].get("tool_calls") or []:
            fn = call.get("function") or {}
            lines.append(f"- {fn.get('name')}({str(fn.get('arguments'))[:120]})")
        for m in turn[1:]:
            text = " ".join(str(m.get("content") or "").split())
            lines.append(f"  -> {text[:head]}{'...' if len(text) > head else ''}")
        blocks.append("\n".join(lines))
    kept, size = 0, 0
    while kept < len(blocks) and size + len(blocks[-1 - kept]) <= max_chars:
        size += len(blocks[-1 - kept]) + 1
        kept += 1
    intro = f"Summary of {len(turns)} earlier turns (folded to save context"
    intro += f"; the oldest {len(turns) - kept} omitted):" if kept < len(turns) else "):"
    return {"role": "user", "content": "\n".join([intro, *blocks[len(blocks) - kept :]])}


def build_prompt(messages: list[Message], config: SolverConfig) -> tuple[list[Message], int]:
    """The prompt for the next turn and how many turns were folded into a summary.

    Folds the fewest oldest turns that bring the prompt under the budget; if even folding all
    but the newest `keep_recent` does not, those are folded anyway. The summary itself holds
    at most a quarter of the budget (budget tokens = 4 x budget / 4 characters).
    """
    if count_tokens(messages) <= config.context_budget:
        return list(messages), 0
    head, turns = messages[:2], _turns(messages[2:])
    foldable = len(turns) - config.keep_recent
    prompt, n = list(messages), 0
    for n in range(1, foldable + 1):
        prompt = [*head, _summary(turns[:n], config.summary_chars, config.context_budget)]
        prompt += [m for turn in turns[n:] for m in turn]
        if count_tokens(prompt) <= config.context_budget:
            break
    return prompt, n


def _key(call: dict[str, Any]) -> str:
    fn = call.get("function") or {}
    return f"{fn.get('name')}\x00{fn.get('arguments')}"


@dataclass
class _Turn:
    observations: list[dict[str, Any]]
    checks: dict[str, bool]
    answer: str | None = None
    done: bool = False


def _run_calls(
    calls: list[dict[str, Any]], tools: Tools, made: set[str], result: SolveResult
) -> tuple[_Turn, list[Message]]:
    """Execute one turn's tool calls: the observations, the checks and the tool messages."""
    turn = _Turn([], {"malformed": False, "error": False, "repeat": False,
                      "no_tool_call": not calls})  # fmt: skip
    out: list[Message] = []
    for call in calls:
        obs = tools.execute(call)
        turn.checks["malformed"] |= obs.error_kind in (ErrorKind.MALFORMED, ErrorKind.UNKNOWN_TOOL)
        turn.checks["error"] |= obs.is_error
        turn.checks["repeat"] |= _key(call) in made
        made.add(_key(call))
        result.read_chunk_ids += [c for c in obs.read_chunk_ids if c not in result.read_chunk_ids]
        result.seen_chunk_ids += [c for c in obs.seen_chunk_ids if c not in result.seen_chunk_ids]
        out.append({"role": "tool", "tool_call_id": str(call.get("id") or ""),
                    "content": obs.content})  # fmt: skip
        turn.observations.append(
            {
                "content": obs.content,
                "is_error": obs.is_error,
                "error_kind": obs.error_kind and str(obs.error_kind),
                "done": obs.done,
                "read_chunk_ids": list(obs.read_chunk_ids),
            }
        )
        if obs.done and not turn.done:  # the first answer counts; later calls still run
            turn.done, turn.answer = True, obs.answer
    return turn, out


def solve(question: str, policy: Policy, tools: Tools, config: SolverConfig) -> SolveResult:
    """Run one episode on `question`; never raises for what the policy or a tool did."""
    messages: list[Message] = [{"role": "system", "content": config.system_prompt},
                               {"role": "user", "content": question}]  # fmt: skip
    result = SolveResult(messages, [], None, StopReason.TURN_BUDGET)
    made: set[str] = set()
    idle, last_obs = 0, None
    for t in range(config.max_turns):
        # ---- s_t: the prompt, folded when it passes the budget ----
        prompt, folded = build_prompt(messages, config)
        prompt_tokens = count_tokens(prompt)
        began = time.perf_counter()
        try:
            reply = policy.next_message(prompt, tools.schemas)
        except LLMError as exc:
            result.stop_reason, result.error = StopReason.POLICY_ERROR, str(exc)
            break
        latency = time.perf_counter() - began
        # ---- a_t, o_t, v_t ----
        message = {**reply.message, "role": "assistant"}
        messages.append(message)
        calls = list(message.get("tool_calls") or [])
        turn, tool_messages = _run_calls(calls, tools, made, result)
        messages.extend(tool_messages)
        digest = hashlib.sha256(json.dumps(prompt, default=str).encode()).hexdigest()[:16]
        completion = count_tokens([message])
        result.steps.append(
            StepRecord(
                t,
                prompt_tokens,
                digest,
                folded,
                last_obs,
                str(message.get("content") or ""),
                calls,
                turn.observations,
                turn.checks,
                completion,
                latency,
            )
        )
        result.prompt_tokens += prompt_tokens
        result.completion_tokens += completion
        last_obs = turn.observations[-1]["content"] if turn.observations else last_obs
        # ---- stop? ----
        if turn.done:
            result.answer, result.stop_reason = turn.answer, StopReason.ANSWERED
            break
        idle = idle + 1 if not calls else 0
        if idle >= config.max_idle:
            result.stop_reason = StopReason.IDLE
            break
        if not calls:
            messages.append({"role": "user", "content": NUDGE})
    return result
