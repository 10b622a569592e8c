"""The in-process transformers policy on a tiny random Qwen3 and a byte-level BPE trained here
(no downloads), and its `<tool_call>` parser on hand-written replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from kap.platform.errors import ConfigError, LLMError  # noqa: E402
from kap.workers.local_policy import (  # noqa: E402
    TransformersPolicy,
    parse_tool_calls,
    template_messages,
)

SPECIALS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]  # <|im_end|> is id 0: see test_eos

# Qwen-style; the arguments always go through `tojson` (as Llama/Mistral templates do), so a
# JSON-string argument that reached the template unparsed would show up double-encoded.
TEMPLATE = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}{% if messages[0].role == 'system' %}{{ messages[0].content }}
{% endif %}{{- '<tools>' }}{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}
{{- '\n</tools><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}
{{- '<|im_start|>user\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\n' + message.content }}
{%- for tc in message.tool_calls or [] %}
{{- '\n<tool_call>\n{"name": "' + tc.function.name + '", "arguments": ' }}
{{- tc.function.arguments | tojson }}{{ '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

CORPUS = [
    "Who founded the company that makes the Walkman? Sony was founded by Masaru Ibuka.",
    '<tool_call>\n{"name": "search", "arguments": {"query": "Sony founder", "k": 5}}\n</tool_call>',
    "<tool_response>\nMasaru Ibuka (1908-1997) was a Japanese electronics industrialist.",
    "You may call one or more functions. The answer is Tokyo, in 1946.",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the evidence index.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                "required": ["query"],
            },
        },
    }
]
MESSAGES = [
    {"role": "system", "content": "Answer with tools."},
    {"role": "user", "content": "Who founded the company that makes the Walkman?"},
]


def _tokenizer() -> Any:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = _tokenizer()
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 0
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=1024,
        eos_token_id=0, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(checkpoint: Path) -> TransformersPolicy:
    return TransformersPolicy(checkpoint, max_new_tokens=12)


# ---- the policy on a tiny model ----


def test_replies_with_an_assistant_message_and_exact_usage(
    policy: TransformersPolicy, checkpoint: Path
) -> None:
    reply = policy.next_message(MESSAGES, TOOLS)
    assert reply.message["role"] == "assistant"
    assert isinstance(reply.message["content"], str)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    text = tokenizer.apply_chat_template(MESSAGES, tools=TOOLS, add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    assert text.endswith("<|im_start|>assistant\n") and '"name": "search"' in text
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(policy.generate(prompt, 12))
    assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.requests == 1


def test_greedy_is_deterministic(policy: TransformersPolicy, checkpoint: Path) -> None:
    first = policy.next_message(MESSAGES, TOOLS)
    assert policy.next_message(MESSAGES, TOOLS) == first
    assert TransformersPolicy(checkpoint, max_new_tokens=12).next_message(MESSAGES, TOOLS) == first


def test_sampling_is_reproducible_from_the_seed(checkpoint: Path) -> None:
    def run(seed: int) -> list[list[int]]:
        sampler = TransformersPolicy(checkpoint, temperature=1.5, seed=seed)
        prompt = sampler.encode(MESSAGES, TOOLS)
        return [sampler.generate(prompt, 16) for _ in range(2)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_generation_stops_at_the_end_of_sequence_token(checkpoint: Path) -> None:
    stopper = TransformersPolicy(checkpoint, max_new_tokens=50)
    with torch.no_grad():
        stopper.model.lm_head.weight.zero_()  # all logits equal: argmax is id 0, <|im_end|>
    reply = stopper.next_message(MESSAGES, TOOLS)
    assert reply.message == {"role": "assistant", "content": ""}
    assert reply.usage.completion_tokens == 1


def test_decoded_tool_calls_become_openai_calls(
    policy: TransformersPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = '<tool_call>\n{"name": "search", "arguments": {"query": "Sony"}}\n</tool_call>'
    said = f"Searching.\n{call}"
    ids = policy.tokenizer(said, add_special_tokens=False)["input_ids"] + [0, 5, 6]
    monkeypatch.setattr(policy, "generate", lambda prompt, n: ids)
    reply = policy.next_message(MESSAGES, TOOLS)
    assert reply.message["content"] == "Searching."
    assert reply.message["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "search", "arguments": '{"query": "Sony"}'}}
    ]  # fmt: skip
    assert reply.usage.completion_tokens == len(ids)  # what was generated, after the EOS too


def test_tool_call_history_renders_arguments_once(policy: TransformersPolicy) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "search", "arguments": '{"query": "Sony", "k": 3}'}}  # fmt: skip
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Masaru Ibuka"}]  # fmt: skip
    text = policy.render(history, TOOLS)
    assert '{"name": "search", "arguments": {"query": "Sony", "k": 3}}' in text
    assert "<tool_response>\nMasaru Ibuka\n</tool_response>" in text
    assert history[2]["tool_calls"][0]["function"]["arguments"] == '{"query": "Sony", "k": 3}'
    assert template_messages(history)[2]["content"] == ""


def test_a_prompt_past_the_window_is_an_llm_error(
    policy: TransformersPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy, "window", 8)
    with pytest.raises(LLMError, match="window"):
        policy.next_message(MESSAGES, TOOLS)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        TransformersPolicy(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        TransformersPolicy(tmp_path)


def test_the_eval_cli_builds_one_local_policy(checkpoint: Path) -> None:
    import typer

    from kap.workers.cli import SolverKind, _policy_factory

    with pytest.raises(typer.BadParameter, match="--model"):
        _policy_factory(SolverKind.LOCAL, k=5, endpoint=None, model=None)
    factory = _policy_factory(SolverKind.LOCAL, k=5, endpoint=None, model=str(checkpoint))
    assert isinstance(factory(), TransformersPolicy) and factory() is factory()


# ---- the parser ----


def test_parse_one_call() -> None:
    content, calls = parse_tool_calls(
        'Let me look.\n<tool_call>\n{"name": "visit", "arguments": {"id": "c-1"}}\n</tool_call>'
    )
    assert content == "Let me look."
    assert calls == [{"id": "call_1", "type": "function",
                      "function": {"name": "visit", "arguments": '{"id": "c-1"}'}}]  # fmt: skip


def test_parse_two_calls() -> None:
    text = (
        '<tool_call>\n{"name": "search", "arguments": {"query": "Ibuka", "k": 3}}\n</tool_call>\n'
        '<tool_call>{"name": "graph", "arguments": {"name": "Sony Café"}}</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [c["id"] for c in calls] == ["call_1", "call_2"]
    assert [c["function"]["name"] for c in calls] == ["search", "graph"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"query": "Ibuka", "k": 3}
    assert calls[1]["function"]["arguments"] == '{"name": "Sony Café"}'


@pytest.mark.parametrize(
    "block",
    [
        '{"name": "search", "arguments": {"query": "x"}',  # unbalanced JSON
        '{"arguments": {"query": "x"}}',  # no name
        '{"name": "search", "arguments": ["x"]}',  # arguments not an object
        "search(query='x')",  # not JSON at all
    ],
)
def test_a_malformed_call_stays_in_the_content(block: str) -> None:
    text = f"Trying.\n<tool_call>\n{block}\n</tool_call>"
    assert parse_tool_calls(text) == (text, [])


def test_a_malformed_block_does_not_hide_a_good_one() -> None:
    bad = "<tool_call>\n{oops}\n</tool_call>"
    good = '<tool_call>\n{"name": "answer", "arguments": {"text": "Tokyo"}}\n</tool_call>'
    content, calls = parse_tool_calls(f"{bad}\n{good}")
    assert content == bad
    assert [c["function"]["name"] for c in calls] == ["answer"]
    assert calls[0]["id"] == "call_1"


def test_parse_no_call_and_an_unclosed_block() -> None:
    assert parse_tool_calls("  The answer is Tokyo.\n") == ("The answer is Tokyo.", [])
    cut = '<tool_call>\n{"name": "search", "arguments": {"query": "So'  # max_new_tokens cut it
    assert parse_tool_calls(cut) == (cut, [])


def test_string_arguments_are_accepted_and_normalized() -> None:
    _, calls = parse_tool_calls(
        '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>'
    )
    assert calls[0]["function"]["arguments"] == '{"query": "x"}'
