"""LLM fact extraction: schema-typed requests, validation, the content-hash cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kap.graphstore.extract import LLMExtractor, normalize_predicate
from kap.platform.llm import ChatClient, EndpointConfig
from tests.support.openai_server import completion, openai_server

FACTS = {"facts": [{"subject": "Ada Lovelace", "predicate": "Born In", "object": "London"}]}


def extractor(url: str, cache: Path, model: str = "m") -> LLMExtractor:
    return LLMExtractor(ChatClient(EndpointConfig(url, model, backoff_s=0.01)), cache)


def test_facts_are_requested_with_a_schema_and_cached(tmp_path: Path) -> None:
    with openai_server(lambda body: completion(json.dumps(FACTS))) as (url, state):
        first = extractor(url, tmp_path).extract("Ada was born in London.", title="Ada Lovelace")
        again = extractor(url, tmp_path)
        second = again.extract("Ada was born in London.", title="Ada Lovelace")
        other_model = extractor(url, tmp_path, model="m2")
        other_model.extract("Ada was born in London.", title="Ada Lovelace")
    assert [f.model_dump() for f in first] == FACTS["facts"]
    assert second == first and again.calls == 0  # served from the cache: no request
    assert len(state.requests) == 2  # a different model is a different cache key
    rf = state.requests[0]["response_format"]
    assert rf["type"] == "json_schema" and "facts" in rf["json_schema"]["schema"]["properties"]


def test_unusable_replies_count_as_failures_and_are_not_cached(tmp_path: Path) -> None:
    replies = iter(['{"facts": [{"subject": "A"}]}', "not json", json.dumps(FACTS)])

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        return completion(next(replies))

    with openai_server(responder) as (url, state):
        ex = extractor(url, tmp_path)
        assert ex.extract("t", title="T") == []  # fails the schema
        assert ex.extract("t", title="T") == []  # not JSON
        assert len(ex.extract("t", title="T")) == 1  # the failures were not cached
    assert (ex.failures, ex.calls, len(state.requests)) == (2, 3, 3)


def test_fenced_json_is_accepted(tmp_path: Path) -> None:
    fenced = "```json\n" + json.dumps(FACTS) + "\n```"
    with openai_server(lambda body: completion(fenced)) as (url, _):
        assert extractor(url, tmp_path).extract("t", title="T")[0].object == "London"


def test_predicates_normalize_to_one_spelling() -> None:
    assert normalize_predicate("Was Born In") == "was_born_in"
    assert normalize_predicate("  member-of ") == "member_of"
    assert normalize_predicate("!!!") == "related_to"
