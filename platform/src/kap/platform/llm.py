"""A client for OpenAI-compatible chat endpoints (what vLLM, SGLang and hosted APIs serve).

    client = ChatClient(EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="qwen3"))
    reply = client.chat([{"role": "user", "content": "hi"}])

Timeouts on every request; retries with exponential backoff and jitter on transient failures
only (connection errors, timeouts, 429, 5xx), never on a 4xx that would fail again; at most
`max_concurrency` requests in flight per endpoint across every client in the process (a
vLLM server queues the rest anyway, and a campaign's threads should not pile onto it); token
usage recorded per reply and summed per client.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from kap.platform.errors import LLMError, TransientLLMError

Message = dict[str, Any]
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # ends before /chat/completions, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0  # per request; long generations need minutes
    max_retries: int = 4  # transient failures only
    backoff_s: float = 0.5  # first retry's base delay, doubled each time
    max_concurrency: int = 8  # requests in flight to this base_url, process-wide


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests


@dataclass(frozen=True)
class ChatReply:
    message: Message  # the assistant message: content and, when the model called tools, tool_calls
    finish_reason: str | None
    usage: Usage
    raw: dict[str, Any] = field(repr=False)


_limits: dict[str, threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()


def _endpoint_limit(config: EndpointConfig) -> threading.BoundedSemaphore:
    with _limits_lock:
        if config.base_url not in _limits:
            _limits[config.base_url] = threading.BoundedSemaphore(config.max_concurrency)
        return _limits[config.base_url]


class ChatClient:
    """Chat completions against one endpoint and model. Thread-safe."""

    def __init__(self, config: EndpointConfig, *, http: httpx.Client | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = http or httpx.Client(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s
        )
        self.usage = Usage()
        self._usage_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        **extra: Any,
    ) -> ChatReply:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": list(messages),
            "temperature": temperature,
            **extra,
        }
        if tools:
            body["tools"] = list(tools)
        if response_format:
            body["response_format"] = response_format
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        data = self._post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            message = dict(choice["message"])
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"{self.config.base_url}: reply has no choices[0].message") from exc
        raw_usage = data.get("usage") or {}
        usage = Usage(
            int(raw_usage.get("prompt_tokens") or 0),
            int(raw_usage.get("completion_tokens") or 0),
            1,
        )
        with self._usage_lock:
            self.usage.add(usage)
        return ChatReply(message, choice.get("finish_reason"), usage, data)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: TransientLLMError | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = self.config.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))  # jitter: retries do not align
            try:
                return self._post_once(path, body)
            except TransientLLMError as exc:
                last = exc
        assert last is not None
        raise last

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.config.base_url.rstrip('/')}{path}"
        with _endpoint_limit(self.config):
            try:
                response = self._http.post(path, json=body)
            except httpx.TimeoutException as exc:
                raise TransientLLMError(f"{url}: timed out after {self.config.timeout_s}s") from exc
            except httpx.TransportError as exc:
                raise TransientLLMError(f"{url}: {exc}") from exc
        if response.status_code in TRANSIENT_STATUS:
            raise TransientLLMError(f"{url}: HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise LLMError(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            data = response.json()
        except ValueError as exc:
            raise LLMError(f"{url}: reply is not JSON: {response.text[:200]!r}") from exc
        if not isinstance(data, dict):
            raise LLMError(f"{url}: reply is not a JSON object")
        return data
