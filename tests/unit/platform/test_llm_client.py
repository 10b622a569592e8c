"""The OpenAI-compatible client against a real HTTP server on loopback."""

from __future__ import annotations

import threading
from http import HTTPStatus
from typing import Any

import pytest

from kap.platform.errors import LLMError, TransientLLMError
from kap.platform.llm import ChatClient, EndpointConfig
from tests.support.openai_server import completion, openai_server

USER = [{"role": "user", "content": "hi"}]


def config(url: str, **kw: Any) -> EndpointConfig:
    return EndpointConfig(url, "test-model", **{"backoff_s": 0.01, **kw})


def test_reply_usage_and_request_shape() -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    server = openai_server(lambda body: completion("hello", prompt_tokens=7))
    with server as (url, state), ChatClient(config(url, api_key="sk-test")) as client:
        reply = client.chat(USER, tools=tools, max_tokens=32)
        client.chat(USER)
    assert reply.message == {"role": "assistant", "content": "hello"}
    assert reply.usage.prompt_tokens == 7
    assert (client.usage.prompt_tokens, client.usage.completion_tokens) == (14, 10)
    assert client.usage.requests == 2
    first = state.requests[0]
    assert first["model"] == "test-model" and first["tools"] == tools
    assert first["max_tokens"] == 32 and "tools" not in state.requests[1]
    assert state.headers[0]["Authorization"] == "Bearer sk-test"


def test_transient_errors_are_retried_then_succeed() -> None:
    statuses = iter([HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS])

    def flaky(body: dict[str, Any]) -> dict[str, Any] | HTTPStatus:
        return next(statuses, None) or completion("ok")

    with openai_server(flaky) as (url, state), ChatClient(config(url)) as client:
        assert client.chat(USER).message["content"] == "ok"
    assert len(state.requests) == 3


def test_client_errors_are_not_retried() -> None:
    with openai_server(lambda body: HTTPStatus.BAD_REQUEST) as (url, state):
        client = ChatClient(config(url))
        with pytest.raises(LLMError, match="HTTP 400"):
            client.chat(USER)
    assert len(state.requests) == 1


def test_retries_stop_at_the_cap() -> None:
    with openai_server(lambda body: HTTPStatus.BAD_GATEWAY) as (url, state):
        client = ChatClient(config(url, max_retries=2))
        with pytest.raises(TransientLLMError, match="HTTP 502"):
            client.chat(USER)
    assert len(state.requests) == 3


def test_timeout_is_transient() -> None:
    with openai_server(lambda body: completion("late"), delay_s=0.5) as (url, _):
        client = ChatClient(config(url, timeout_s=0.1, max_retries=1))
        with pytest.raises(TransientLLMError, match="timed out"):
            client.chat(USER)


def test_concurrency_is_limited_per_endpoint() -> None:
    with openai_server(lambda body: completion("x"), delay_s=0.05) as (url, state):
        clients = [ChatClient(config(url, max_concurrency=2)) for _ in range(3)]
        threads = [threading.Thread(target=c.chat, args=(USER,)) for c in clients for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(state.requests) == 9
    assert state.max_in_flight == 2


def test_reply_without_choices_is_an_error() -> None:
    with openai_server(lambda body: {"choices": []}) as (url, _):
        client = ChatClient(config(url))
        with pytest.raises(LLMError, match="choices"):
            client.chat(USER)
