"""The locally trained byte-level BPE: exact round trips, chat-format tokens as single ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from kap.training.chat import CHAT_TEMPLATE
from kap.training.errors import CheckpointError, TrainingError
from kap.training.tokenizer import (
    SPECIAL_TOKENS,
    TAG_TOKENS,
    corpus_texts,
    default_corpus_paths,
    load_tokenizer,
    special_token_ids,
    tool_call_snippets,
    train_tokenizer,
)

MUSIQUE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "musique" / "corpus.json"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(corpus_texts([MUSIQUE], limit=300), vocab_size=2048)


def test_default_corpus_is_the_shared_musique_file() -> None:
    assert default_corpus_paths() == [MUSIQUE]
    first = json.loads(MUSIQUE.read_text())[0]
    texts = list(corpus_texts(limit=2, with_tool_snippets=False))
    assert texts[0] == f"{first['title']}\n{first['text']}"
    assert len(texts) == 2


def test_corpus_texts_end_with_chat_format_tool_snippets() -> None:
    snippets = tool_call_snippets()
    assert list(corpus_texts([MUSIQUE], limit=1))[1:] == snippets
    assert all("<tool_call>\n{" in s and "<tool_response>" in s for s in snippets)


def test_corpus_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"nope\.json"):
        list(corpus_texts([tmp_path / "nope.json"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(TrainingError, match=r"bad\.jsonl:2"):
        list(corpus_texts([bad]))
    untexted = tmp_path / "untexted.json"
    untexted.write_text('[{"title": "t"}]')
    with pytest.raises(TrainingError, match="record 0"):
        list(corpus_texts([untexted]))


def test_vocab_size_and_special_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) == 2048
    assert special_token_ids(tokenizer, SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=200)


@pytest.mark.parametrize(
    "text",
    [
        "Plain ASCII, with punctuation; and numbers 1891-2024.",
        "  leading and trailing spaces \t\n\n\r\n",
        'JSON {"name": "search", "arguments": {"q": "Ünïcödé", "k": 5}}',
        "日本語のテキスト, emoji 🧪🚀, Ελληνικά, עברית, zero\u200bwidth",
        "<|im_start|>user\nhi<|im_end|>\n<tool_call>\n{}\n</tool_call><think>x</think>",
    ],
)
def test_round_trip_is_exact(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_unseen_corpus_text_round_trips(tokenizer: PreTrainedTokenizerFast) -> None:
    records = json.loads(MUSIQUE.read_text())[300:340]
    for record in records:
        ids = tokenizer.encode(record["text"], add_special_tokens=False)
        assert tokenizer.decode(ids) == record["text"]


def test_tags_survive_skip_special_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "<|im_start|>assistant\n<tool_call>\n{}\n</tool_call><|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "assistant\n<tool_call>\n{}\n</tool_call>"
    )
    assert set(TAG_TOKENS).isdisjoint(tokenizer.all_special_tokens)


def test_save_and_load_round_trip(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "Who founded <tool_call> in 1891? <|im_end|>"
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(
        text, add_special_tokens=False
    )
    assert loaded.chat_template == CHAT_TEMPLATE
    assert (loaded.eos_token_id, loaded.pad_token_id) == (2, 0)


def test_load_tokenizer_names_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing-tok"):
        load_tokenizer(tmp_path / "missing-tok")
