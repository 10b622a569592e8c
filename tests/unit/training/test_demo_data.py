"""Demo conversations from the MuSiQue corpus: deterministic, renderable, true to the corpus."""

from __future__ import annotations

import json
from pathlib import Path

from kap.training.chat import load_conversations_jsonl, validate_messages
from kap.training.demo_data import demo_conversations, first_sentence, write_demo_conversations

MUSIQUE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "musique" / "corpus.json"


def test_same_seed_same_file_other_seed_other_file(tmp_path: Path) -> None:
    a = write_demo_conversations(tmp_path / "a.jsonl", 30, seed=4)
    b = write_demo_conversations(tmp_path / "b.jsonl", 30, seed=4)
    c = write_demo_conversations(tmp_path / "c.jsonl", 30, seed=5)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    loaded = load_conversations_jsonl(a)
    assert loaded == demo_conversations(30, seed=4)
    assert {conv.domain for conv in loaded} == {"search", "code"}
    assert len({conv.id for conv in loaded}) == 30


def test_conversations_are_openai_tool_calls_over_real_paragraphs() -> None:
    corpus = {r["title"]: r["text"] for r in json.loads(MUSIQUE.read_text())}
    for conv in demo_conversations(40, seed=0):
        validate_messages(conv.messages, conv.tools)
        calls = [m for m in conv.messages if m.get("tool_calls")]
        results = [m for m in conv.messages if m["role"] == "tool"]
        assert len(calls) == len(results) >= 1
        for call, result in zip(calls, results, strict=True):
            (tool_call,) = call["tool_calls"]
            assert result["tool_call_id"] == tool_call["id"]
            arguments = json.loads(tool_call["function"]["arguments"])  # OpenAI: a JSON string
            if tool_call["function"]["name"] == "search":
                assert arguments["query"] in corpus
                assert result["content"].startswith(f"[{arguments['query']}] ")
        final = conv.messages[-1]
        assert final["role"] == "assistant" and final["content"]
        if conv.domain == "code":
            code = json.loads(calls[1]["tool_calls"][0]["function"]["arguments"])["code"]
            sentence = json.loads(code.removeprefix("print(len(").removesuffix(".split()))"))
            assert final["content"] == f"It has {len(sentence.split())} words."


def test_first_sentence_stops_at_a_sentence_end() -> None:
    assert first_sentence("St. Louis is big. It is old.") == "St. Louis is big."
    assert first_sentence("No end here") == "No end here"
