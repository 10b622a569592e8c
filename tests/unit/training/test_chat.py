"""The chat template with tool calls, exact assistant-only labels, and the bad-input rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from kap.training.chat import (
    IGNORE_INDEX,
    Conversation,
    load_conversations_jsonl,
    render_conversation,
    render_conversations,
    render_text,
)
from kap.training.errors import ConversationError
from kap.training.tokenizer import corpus_texts, train_tokenizer

MUSIQUE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "musique" / "corpus.json"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search passages.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a research agent."},
    {"role": "user", "content": "Who founded Stanford?"},
    {
        "role": "assistant",
        "content": "Let me search.",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "search", "arguments": '{"query": "Stanford founder"}'},
            },
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "search", "arguments": {"query": "Leland Stanford"}},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "search", "content": "Founded in 1885."},
    {"role": "tool", "tool_call_id": "c2", "name": "search", "content": "Leland Stanford, 1824."},
    {"role": "assistant", "content": "Leland and Jane Stanford (1885)."},
]
TOOL_JSON = json.dumps(TOOLS[0])
EXPECTED = (
    "<|im_start|>system\nYou are a research agent.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    f"<tools>\n{TOOL_JSON}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWho founded Stanford?<|im_end|>\n"
    "<|im_start|>assistant\nLet me search.\n"
    '<tool_call>\n{"name": "search", "arguments": {"query": "Stanford founder"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "search", "arguments": {"query": "Leland Stanford"}}\n</tool_call>'
    "<|im_end|>\n"
    "<|im_start|>user\n<tool_response>\nFounded in 1885.\n</tool_response>\n"
    "<tool_response>\nLeland Stanford, 1824.\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nLeland and Jane Stanford (1885).<|im_end|>\n"
)
ASSISTANT_BODIES = [
    "Let me search.\n"
    '<tool_call>\n{"name": "search", "arguments": {"query": "Stanford founder"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "search", "arguments": {"query": "Leland Stanford"}}\n</tool_call>'
    "<|im_end|>",
    "Leland and Jane Stanford (1885).<|im_end|>",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(corpus_texts([MUSIQUE], limit=300), vocab_size=2048)


def labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled tokens, each checked to carry its own id."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    return runs


# ---- the template ----


def test_template_renders_tools_calls_and_grouped_results(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    assert render_text(tokenizer, MESSAGES, tools=TOOLS) == EXPECTED


def test_generation_prompt_and_plain_chats(tokenizer: PreTrainedTokenizerFast) -> None:
    chat = [{"role": "user", "content": "Hi"}]
    assert render_text(tokenizer, chat) == "<|im_start|>user\nHi<|im_end|>\n"
    assert render_text(tokenizer, chat, add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    with_tools = render_text(tokenizer, chat, tools=TOOLS)
    assert with_tools.startswith("<|im_start|>system\n# Tools\n\n")


def test_tool_only_assistant_and_flat_tool_calls(tokenizer: PreTrainedTokenizerFast) -> None:
    chat = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": "{}"}]},
    ]
    assert render_text(tokenizer, chat).endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
        "<|im_end|>\n"
    )


# ---- ids and labels ----


def test_render_matches_apply_chat_template(tokenizer: PreTrainedTokenizerFast) -> None:
    sample = render_conversation(tokenizer, MESSAGES, tools=TOOLS)
    reference = tokenizer.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=True)
    assert sample.input_ids == list(reference["input_ids"])  # a BatchEncoding in transformers 5
    assert tokenizer.decode(sample.input_ids) == EXPECTED
    assert not sample.truncated


def test_labels_are_exactly_the_assistant_bodies(tokenizer: PreTrainedTokenizerFast) -> None:
    sample = render_conversation(tokenizer, MESSAGES, tools=TOOLS)
    runs = labelled_runs(sample.input_ids, sample.labels)
    assert [tokenizer.decode(run) for run in runs] == ASSISTANT_BODIES
    newline = tokenizer.encode("\n", add_special_tokens=False)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for n, token in enumerate(sample.input_ids):
        if token == im_end and sample.labels[n] != IGNORE_INDEX:
            # the "\n" after a trained <|im_end|> is not generated, so it is masked
            assert sample.input_ids[n + 1 : n + 2] == newline
            assert sample.labels[n + 1] == IGNORE_INDEX


@pytest.mark.parametrize(
    "content",
    ["Ünïcödé 日本 🧪 answer", "  two leading spaces", "trailing spaces  ", "", "x"],
)
def test_label_boundaries_hold_for_odd_content(
    tokenizer: PreTrainedTokenizerFast, content: str
) -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]
    sample = render_conversation(tokenizer, chat)
    runs = labelled_runs(sample.input_ids, sample.labels)
    assert [tokenizer.decode(run) for run in runs] == [content + "<|im_end|>"]


def test_body_starting_with_a_newline_labels_the_merged_header_token(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    # Documented inexact case: "\n" (header) + "\n..." (body) pre-tokenize as one "\n\n".
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\nbody"}]
    sample = render_conversation(tokenizer, chat)
    (run,) = labelled_runs(sample.input_ids, sample.labels)
    assert tokenizer.decode(run) == "\n\nbody<|im_end|>"


def test_truncation_cuts_from_the_right_and_says_so(tokenizer: PreTrainedTokenizerFast) -> None:
    full = render_conversation(tokenizer, MESSAGES, tools=TOOLS)
    cut = render_conversation(tokenizer, MESSAGES, tools=TOOLS, max_length=40)
    assert cut.truncated
    assert cut.input_ids == full.input_ids[:40]
    assert cut.labels == full.labels[:40]
    assert not render_conversation(tokenizer, MESSAGES, tools=TOOLS, max_length=len(full)).truncated


# ---- bad input ----


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        (
            [{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}],
            r"message 1 .*robot",
        ),
        ([{"role": "user", "content": None}], r"message 0 \(user\): missing content"),
        ([{"role": "user", "content": [{"type": "text"}]}], r"message 0 .*must be a string"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}],
            r"message 1 \(assistant\): missing content and no tool_calls",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}],
                },
            ],
            r"message 1 \(assistant\): tool_calls\[0\] arguments are not valid JSON",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
            ],
            r"message 1 .*not a JSON object",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
            r"message 1 \(tool\): a tool result must follow",
        ),
    ],
)
def test_bad_messages_name_index_and_problem(
    tokenizer: PreTrainedTokenizerFast, messages: list[dict[str, Any]], match: str
) -> None:
    with pytest.raises(ConversationError, match=match):
        render_conversation(tokenizer, messages)
    with pytest.raises(ValueError, match=match):  # also a ValueError
        render_conversation(tokenizer, messages)


# ---- JSONL ----


def test_load_jsonl_and_render_dataset(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    lines = [
        json.dumps({"messages": MESSAGES, "tools": TOOLS, "domain": "search", "id": 7}),
        "",
        json.dumps({"messages": chat}),
    ]
    path.write_text("\n".join(lines) + "\n")
    conversations = load_conversations_jsonl(path)
    assert [(c.domain, c.id, c.tools is None) for c in conversations] == [
        ("search", 7, False),
        (None, None, True),
    ]
    samples = render_conversations(tokenizer, conversations, max_length=4096)
    assert samples[0].input_ids == render_conversation(tokenizer, MESSAGES, tools=TOOLS).input_ids
    assert samples[0].domain == "search"


def test_render_dataset_errors_name_the_conversation(tokenizer: PreTrainedTokenizerFast) -> None:
    bad = Conversation(messages=[{"role": "user", "content": None}], id="traj-9")
    with pytest.raises(ConversationError, match=r"conversation 0 \(id='traj-9'\): message 0"):
        render_conversations(tokenizer, [bad])


def test_load_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    path.write_text(good + "\n" + "{truncated\n")
    with pytest.raises(ConversationError, match=r"bad\.jsonl:2: invalid JSON"):
        load_conversations_jsonl(path)
    bad_message = {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": 1}]}
    path.write_text(good + "\n\n" + json.dumps(bad_message) + "\n")
    with pytest.raises(ConversationError, match=r"bad\.jsonl:3: message 1 \(tool\)"):
        load_conversations_jsonl(path)
