"""Malformed and failing tool calls become error observations; `execute` never raises.

These calls fail before any store is touched, so the toolset gets no driver or index.
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from kap.platform.errors import SandboxError
from kap.workers.sandbox import ExecResult
from kap.workers.tools import SCHEMAS, ErrorKind, Toolset


def call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


class RefusingSandbox:
    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> ExecResult:
        raise SandboxError("bubblewrap is not installed")


class EchoSandbox:
    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> ExecResult:
        return ExecResult("42\n", "", 0, timed_out=False, killed_by=None, wall_s=0.01)


def toolset(sandbox: Any = None) -> Toolset:
    nothing = cast(Any, None)  # these calls never reach Neo4j or the index
    return Toolset(nothing, "d", index=nothing, embedder=nothing, sandbox=sandbox)


def test_every_tool_has_a_json_schema() -> None:
    names = [s["function"]["name"] for s in SCHEMAS]
    assert names == ["search", "visit", "graph", "python", "answer"]
    for schema in SCHEMAS:
        params = schema["function"]["parameters"]
        assert params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])
    json.dumps(SCHEMAS)


@pytest.mark.parametrize(
    ("tool_call", "kind"),
    [
        (call("search", '{"query": "x"'), ErrorKind.MALFORMED),  # truncated JSON
        (call("search", '["x"]'), ErrorKind.MALFORMED),  # not an object
        ({"id": "c1", "type": "function"}, ErrorKind.MALFORMED),  # no function
        (cast(Any, "search(x)"), ErrorKind.MALFORMED),  # not a call at all
        (call("browse", '{"url": "x"}'), ErrorKind.UNKNOWN_TOOL),
        (call("_read", "{}"), ErrorKind.UNKNOWN_TOOL),  # no private method reachable
        (call("search", "{}"), ErrorKind.INVALID),  # missing query
        (call("search", '{"query": "x", "k": 0}'), ErrorKind.INVALID),
        (call("search", '{"query": "x", "k": "5"}'), ErrorKind.INVALID),
        (call("visit", '{"id": ""}'), ErrorKind.INVALID),
        (call("graph", '{"name": 7}'), ErrorKind.INVALID),
        (call("python", '{"code": "  "}'), ErrorKind.INVALID),
        (call("answer", "{}"), ErrorKind.INVALID),
    ],
)
def test_bad_calls_are_error_observations(tool_call: dict[str, Any], kind: ErrorKind) -> None:
    obs = toolset().execute(tool_call)
    assert obs.is_error
    assert obs.error_kind is kind
    assert not obs.done
    assert json.loads(obs.content)["kind"] == kind


def test_python_without_a_sandbox_never_runs_the_code() -> None:
    obs = toolset().execute(call("python", '{"code": "print(1)"}'))
    assert obs.is_error
    assert "no sandbox" in json.loads(obs.content)["error"]


def test_a_sandbox_that_cannot_start_is_a_clear_error() -> None:
    obs = toolset(RefusingSandbox()).execute(call("python", '{"code": "print(1)"}'))
    assert obs.is_error
    assert obs.error_kind is ErrorKind.FAILED
    assert "bubblewrap is not installed" in json.loads(obs.content)["error"]


def test_python_reports_what_the_program_did() -> None:
    obs = toolset(EchoSandbox()).execute(call("python", '{"code": "print(6 * 7)"}'))
    assert not obs.is_error
    assert json.loads(obs.content) == {"stdout": "42\n", "stderr": "", "exit_code": 0,
                                       "timed_out": False}  # fmt: skip


def test_answer_ends_the_episode() -> None:
    obs = toolset().execute(call("answer", '{"text": " Victoria Falls "}'))
    assert obs.done
    assert not obs.is_error
    assert obs.answer == "Victoria Falls"


def test_arguments_may_arrive_as_an_object() -> None:
    obs = toolset().execute(call("answer", {"text": "x"}))
    assert obs.done
