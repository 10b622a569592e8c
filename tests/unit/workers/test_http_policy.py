"""The HTTP policy and the LLM judge against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from kap.platform.llm import ChatClient, EndpointConfig
from kap.workers.policy import HttpPolicy
from kap.workers.solver import SolverConfig, StopReason, solve
from kap.workers.tools import Observation
from kap.workers.verifier import ChatJudge, Gold, verify
from tests.support.openai_server import completion, openai_server

SCHEMAS = [{"type": "function", "function": {"name": "answer", "parameters": {"type": "object"}}}]


class AnswerTool:
    """The one tool the scripted model calls; not a store."""

    schemas = SCHEMAS

    def execute(self, call: dict[str, Any]) -> Observation:
        text = json.loads(call["function"]["arguments"])["text"]
        return Observation(json.dumps({"answer": text}), done=True, answer=text)


def test_a_served_model_drives_the_solver_with_tool_calls_and_usage() -> None:
    def model(body: dict[str, Any]) -> dict[str, Any]:
        assert body["tools"] == SCHEMAS and body["messages"][-1]["role"] == "user"
        call = {"id": "c1", "type": "function",
                "function": {"name": "answer", "arguments": {"text": "Tennessee"}}}  # fmt: skip
        return completion(None, tool_calls=[call], prompt_tokens=42, completion_tokens=7)

    with openai_server(model) as (url, state):
        client = ChatClient(EndpointConfig(url, "served"))
        result = solve("Where?", HttpPolicy(client), AnswerTool(), SolverConfig(max_turns=5))
    assert result.stop_reason is StopReason.ANSWERED and result.answer == "Tennessee"
    (call,) = result.steps[0].tool_calls
    assert call["function"]["arguments"] == '{"text": "Tennessee"}'  # objects become JSON text
    assert client.usage.prompt_tokens == 42 and client.usage.completion_tokens == 7
    assert len(state.requests) == 1


def test_a_failing_endpoint_ends_the_episode_as_a_policy_error() -> None:
    with openai_server(lambda body: HTTPStatus.BAD_REQUEST) as (url, _):
        client = ChatClient(EndpointConfig(url, "served", max_retries=0))
        result = solve("Where?", HttpPolicy(client), AnswerTool(), SolverConfig(max_turns=5))
    assert result.stop_reason is StopReason.POLICY_ERROR and "400" in str(result.error)


def test_the_llm_judge_decides_what_exact_match_cannot() -> None:
    gold = Gold("Where did he live?", "Tennessee")
    with openai_server(lambda body: completion("Yes.")) as (url, state):
        verdict = verify(gold, "the state of Tennessee, USA", answered=True, read_chunk_ids=set(),
                         judge=ChatJudge(ChatClient(EndpointConfig(url, "judge"))))  # fmt: skip
    assert verdict.correct and verdict.components["exact_match"] == 0.0
    assert "Tennessee" in state.requests[0]["messages"][0]["content"]
    with openai_server(lambda body: completion("maybe")) as (url, _):
        unsure = verify(gold, "Kentucky", answered=True, read_chunk_ids=set(),
                        judge=ChatJudge(ChatClient(EndpointConfig(url, "judge"))))  # fmt: skip
    assert not unsure.correct and unsure.details["judge"] == "no verdict"
