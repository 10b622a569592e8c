"""The agent loop with in-memory policies and tools: budget, folding, records, stop reasons."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from kap.platform.errors import LLMError
from kap.workers.policy import Message, PolicyReply, tool_call
from kap.workers.scripted_policy import ScriptedPolicy, estimate_hops
from kap.workers.solver import SolverConfig, StopReason, build_prompt, count_tokens, solve
from kap.workers.tools import SCHEMAS, Observation


class EchoTools:
    """Every call but `answer` returns a long observation that reads one chunk."""

    def __init__(self, size: int = 400) -> None:
        self.size, self.calls = size, 0

    @property
    def schemas(self) -> list[dict[str, Any]]:
        return SCHEMAS

    def execute(self, call: dict[str, Any]) -> Observation:
        self.calls += 1
        fn = call["function"]
        if fn["name"] == "answer":
            text = json.loads(fn["arguments"])["text"]
            return Observation("ok", done=True, answer=text)
        return Observation("x" * self.size, read_chunk_ids=(f"chunk:{self.calls}",))


class Searcher:
    """Searches forever (the same query every other turn), or answers at turn `answer_at`."""

    def __init__(self, answer_at: int | None = None) -> None:
        self.answer_at, self.turn = answer_at, 0
        self.prompts: list[list[Message]] = []

    def next_message(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> PolicyReply:
        self.prompts.append(list(messages))
        self.turn += 1
        if self.turn == self.answer_at:
            call = tool_call(f"c{self.turn}", "answer", '{"text": "42"}')
        else:
            call = tool_call(f"c{self.turn}", "search", json.dumps({"query": self.turn % 2}))
        return PolicyReply({"role": "assistant", "content": "", "tool_calls": [call]})


def test_the_turn_budget_stops_the_episode() -> None:
    result = solve("q?", Searcher(), EchoTools(), SolverConfig(max_turns=7))
    assert result.stop_reason is StopReason.TURN_BUDGET
    assert result.turns == 7
    assert result.answer is None
    assert len(result.read_chunk_ids) == 7


def test_the_answer_tool_ends_the_episode() -> None:
    result = solve("q?", Searcher(answer_at=3), EchoTools(), SolverConfig())
    assert result.stop_reason is StopReason.ANSWERED
    assert result.answer == "42"
    assert result.turns == 3
    assert [m["role"] for m in result.messages] == ["system", "user"] + ["assistant", "tool"] * 3


def test_each_step_records_state_action_observation_and_checks() -> None:
    result = solve("q?", Searcher(answer_at=4), EchoTools(), SolverConfig())
    first, third = result.steps[0], result.steps[2]
    assert first.last_observation is None
    assert third.last_observation == "x" * 400
    assert third.tool_calls[0]["function"]["name"] == "search"
    assert third.observations[0]["read_chunk_ids"] == ["chunk:3"]
    assert third.checks["repeat"]  # turn 3 repeats turn 1's query
    assert not result.steps[1].checks["repeat"]
    assert first.prompt_tokens == count_tokens(result.messages[:2])
    assert result.prompt_tokens == sum(s.prompt_tokens for s in result.steps)


def test_folding_shrinks_the_prompt_but_keeps_the_record_whole() -> None:
    policy = Searcher(answer_at=40)
    config = SolverConfig(context_budget=1500, keep_recent=3)
    result = solve("q?", policy, EchoTools(size=400), config)
    assert result.turns == 40
    assert len(result.messages) == 2 + 2 * 40  # every message, unfolded
    assert all(m["content"] == "x" * 400 for m in result.messages[3:-1:2])
    folded = [s for s in result.steps if s.folded_turns]
    assert folded  # the budget was passed
    assert all(s.prompt_tokens <= 1500 for s in folded)
    last = policy.prompts[-1]
    assert last[:2] == result.messages[:2]  # system and question stay
    assert last[2]["content"].startswith("Summary of")
    assert last[-2:] == result.messages[-4:-2]  # the newest turns verbatim


def test_build_prompt_keeps_recent_turns_even_over_budget() -> None:
    messages: list[Message] = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    for i in range(5):
        messages.append({"role": "assistant", "content": "",
                         "tool_calls": [tool_call(f"c{i}", "search", "{}")]})  # fmt: skip
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "y" * 4000})
    prompt, folded = build_prompt(messages, SolverConfig(context_budget=10, keep_recent=2))
    assert folded == 3
    assert prompt[3:] == messages[-4:]


class Mute:
    def next_message(self, messages: Sequence[Message], tools: Sequence[Any]) -> PolicyReply:
        return PolicyReply({"role": "assistant", "content": "I think it is 42."})


class Broken:
    def next_message(self, messages: Sequence[Message], tools: Sequence[Any]) -> PolicyReply:
        raise LLMError("HTTP 400: bad request")


def test_replies_without_tool_calls_are_nudged_then_stopped() -> None:
    result = solve("q?", Mute(), EchoTools(), SolverConfig(max_idle=3))
    assert result.stop_reason is StopReason.IDLE
    assert result.turns == 3
    assert all(s.checks["no_tool_call"] for s in result.steps)
    assert sum(m["role"] == "user" for m in result.messages) == 3  # question + 2 nudges


def test_a_failing_policy_ends_the_episode_with_its_error() -> None:
    result = solve("q?", Broken(), EchoTools(), SolverConfig())
    assert result.stop_reason is StopReason.POLICY_ERROR
    assert "HTTP 400" in str(result.error)


class TinyKB:
    """An in-memory knowledge base: Hello Love -> Hank Snow -> Tennessee."""

    PAGES: ClassVar[dict[str, str]] = {
        "Hello Love": "Hello Love is a song performed by Hank Snow.",
        "Hank Snow": "Hank Snow was a country singer who lived in Tennessee.",
        "Tennessee": "Tennessee is a state in the south of the United States.",
    }
    FACTS: ClassVar[list[tuple[str, str]]] = [
        ("Hello Love", "Hank Snow"),
        ("Hank Snow", "Tennessee"),
    ]

    @property
    def schemas(self) -> list[dict[str, Any]]:
        return SCHEMAS

    def execute(self, call: dict[str, Any]) -> Observation:
        name, args = call["function"]["name"], json.loads(call["function"]["arguments"])
        if name == "search":
            hits = [t for t in self.PAGES if t.lower() in args["query"].lower()] or ["Hello Love"]
            results = [{"chunk_id": t, "title": t, "score": 1.0, "preview": ""} for t in hits]
            return Observation(json.dumps({"results": results}))
        if name == "visit":
            chunks = [{"chunk_id": args["id"], "title": args["id"], "text": self.PAGES[args["id"]]}]
            return Observation(json.dumps({"chunks": chunks}), read_chunk_ids=(args["id"],))
        if name == "graph":
            facts = [{"subject": s, "predicate": "mentions", "object": o, "evidence": []}
                     for s, o in self.FACTS if args["name"] in (s, o)]  # fmt: skip
            return Observation(json.dumps({"entity": args["name"], "facts": facts}))
        return Observation("ok", done=True, answer=args["text"])


def test_the_scripted_policy_follows_a_two_hop_chain() -> None:
    question = "Which state did the performer of Hello Love live in?"
    assert estimate_hops(question) == 2
    result = solve(question, ScriptedPolicy(), TinyKB(), SolverConfig())
    assert result.stop_reason is StopReason.ANSWERED
    assert result.answer == "Tennessee"
    assert {"Hello Love", "Hank Snow"} <= set(result.read_chunk_ids)
    names = [s.tool_calls[0]["function"]["name"] for s in result.steps]
    assert names[0] == "search"
    assert "graph" in names
    assert names[-1] == "answer"


def test_the_scripted_policy_is_deterministic_and_restarts_per_question() -> None:
    policy = ScriptedPolicy()
    question = "Which state did the performer of Hello Love live in?"
    first = solve(question, policy, TinyKB(), SolverConfig())
    again = solve(question, policy, TinyKB(), SolverConfig())
    assert first.messages == again.messages
