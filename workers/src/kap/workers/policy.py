"""The chat interface every solver backend implements: messages and tool schemas in, the next
assistant message out (OpenAI form: `content` and optional `tool_calls` whose `arguments` are
a JSON string), with token usage.

Backends:
- `HttpPolicy`: an OpenAI-compatible endpoint (vLLM in production) through
  `kap.platform.llm.ChatClient`, which owns timeouts, retries, concurrency and usage;
- `ScriptedPolicy` (`kap.workers.scripted_policy`): a deterministic agent over the same tools,
  the baseline that runs the whole loop on a CPU without weights.
- `TransformersPolicy` (`kap.workers.local_policy`): a small local checkpoint run in process
  (torch and transformers: the `local` extra).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kap.platform.llm import ChatClient, Usage

Message = dict[str, Any]


@dataclass(frozen=True)
class PolicyReply:
    message: Message  # {"role": "assistant", "content": ..., "tool_calls": [...]?}
    usage: Usage = field(default_factory=Usage)


class Policy(Protocol):
    """Chooses the next assistant message; its only input is the prompt it is given."""

    def next_message(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> PolicyReply: ...


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One OpenAI-style tool call; `arguments` is the JSON text the model wrote."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class HttpPolicy:
    """A model behind an OpenAI-compatible chat endpoint; raises `LLMError` when it fails."""

    def __init__(
        self, client: ChatClient, *, temperature: float = 0.0, max_tokens: int | None = None
    ) -> None:
        self.client, self.temperature, self.max_tokens = client, temperature, max_tokens

    def next_message(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> PolicyReply:
        reply = self.client.chat(messages, tools=tools, temperature=self.temperature,
                                 max_tokens=self.max_tokens)  # fmt: skip
        message: Message = {"role": "assistant", "content": reply.message.get("content") or ""}
        calls = reply.message.get("tool_calls") or []
        if calls:
            message["tool_calls"] = [_normalize_call(c, i) for i, c in enumerate(calls)]
        return PolicyReply(message, reply.usage)


def _normalize_call(call: Any, index: int) -> dict[str, Any]:
    """Keep the call as the model wrote it, but always with an id and string arguments."""
    if not isinstance(call, dict):
        return tool_call(f"call_{index}", "", repr(call))
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):  # some servers send an object; the record keeps text
        arguments = json.dumps(arguments)
    return tool_call(str(call.get("id") or f"call_{index}"), str(function.get("name") or ""),
                     arguments)  # fmt: skip
