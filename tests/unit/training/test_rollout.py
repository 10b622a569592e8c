"""Rollouts: tool-call parsing, the multi-turn loop's tokens and masks, engine log-probs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from kap.training.chat import IGNORE_INDEX, render_conversation
from kap.training.environments import ArithmeticEnv, RewardConfig, Task, make_arithmetic_tasks
from kap.training.errors import TrainingError
from kap.training.grpo import toy_tokenizer
from kap.training.modeling import TinyModelSpec, build_tiny_model
from kap.training.objectives import token_log_probs
from kap.training.rollout import (
    Episode,
    Generation,
    TransformersEngine,
    VLLMEngine,
    parse_tool_calls,
    run_episode,
    run_episodes,
)

TASK = Task(id="t", prompt="What is 17 + 25?", answer="42", domain="arithmetic")
CALC = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 + 25"}}\n</tool_call>'
ANSWER = '<tool_call>\n{"name": "answer", "arguments": {"text": "42"}}\n</tool_call>'
BEHAVIOUR_LOGP = -0.5


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok: PreTrainedTokenizerFast = toy_tokenizer(512)
    return tok


class ScriptedEngine:
    """Replies chosen by `reply(round, row)`; "|cut" at the end means: stopped by max_new_tokens."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerFast, reply: Callable[[int, int], str]
    ) -> None:
        self.tokenizer, self.reply, self.calls = tokenizer, reply, 0

    def generate(self, prompts: list[list[int]], **_: Any) -> list[Generation]:
        self.calls += 1
        out = []
        for row in range(len(prompts)):
            text = self.reply(self.calls, row)
            cut = text.endswith("|cut")
            ids = self.tokenizer.encode(text.removesuffix("|cut") + ("" if cut else "<|im_end|>"))
            out.append(Generation(ids, [BEHAVIOUR_LOGP] * len(ids), "length" if cut else "stop"))
        return out

    def sync_weights(self, model: nn.Module) -> None:
        pass


def scripted(tokenizer: PreTrainedTokenizerFast, replies: list[str], **kwargs: Any) -> Episode:
    engine = ScriptedEngine(tokenizer, lambda n, _row: replies[min(n, len(replies)) - 1])
    return run_episode(engine, ArithmeticEnv(), TASK, tokenizer, max_new_tokens=64, **kwargs)


def assert_tokens_are_the_rendered_conversation(
    ep: Episode, tokenizer: PreTrainedTokenizerFast, messages: list[dict[str, Any]]
) -> None:
    """ids = the chat template's tokens (minus the final "\\n"); trained = assistant labels."""
    rendered = render_conversation(tokenizer, messages, tools=ep.tools)
    assert ep.token_ids == rendered.input_ids[:-1]
    assert ep.generated == [label != IGNORE_INDEX for label in rendered.labels[:-1]]
    assert ep.logprobs == [BEHAVIOUR_LOGP if g else 0.0 for g in ep.generated]


# ---- parsing ----


def test_parse_well_formed_calls() -> None:
    string_arguments = '{"name": "answer", "arguments": "{\\"text\\": \\"42\\"}"}'
    text = f"Let me compute.\n{CALC}\n<tool_call>{string_arguments}</tool_call>"
    turn = parse_tool_calls(text, id_prefix="call_1")
    assert turn.content == "Let me compute."
    assert turn.errors == []
    assert turn.tool_calls == [
        {"id": "call_1_0", "type": "function",
         "function": {"name": "calculator", "arguments": '{"expression": "17 + 25"}'}},
        {"id": "call_1_1", "type": "function",
         "function": {"name": "answer", "arguments": '{"text": "42"}'}},
    ]  # fmt: skip
    assert parse_tool_calls("just text").tool_calls == []


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "needs"),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "not a JSON object"),
        ('<tool_call>{"name": "f", "arguments": "{oops"}</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "f", "arguments": {}}', "not closed"),
    ],
)
def test_parse_malformed_blocks_become_errors(block: str, reason: str) -> None:
    turn = parse_tool_calls(f"thinking {block}")
    assert turn.tool_calls == []
    assert len(turn.errors) == 1 and reason in turn.errors[0]
    assert turn.content == f"thinking {block}"  # kept verbatim: what the model wrote


# ---- the loop: tokens, masks, observations ----


def test_tool_episode_tokens_are_the_rendered_conversation(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    ep = scripted(tokenizer, [CALC, ANSWER], max_rounds=4)
    assert (ep.end, ep.rounds, ep.format_errors) == ("done", 2, 0)
    assert [m["role"] for m in ep.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert ep.messages[3]["content"] == "42"  # the calculator's observation
    assert (ep.correct, ep.r_proc) == (1.0, 1.0)
    assert ep.components == pytest.approx({"correctness": 1.0, "round_penalty": 0.0,
                                           "repetition_penalty": 0.0, "format": 0.1})  # fmt: skip
    assert ep.reward == pytest.approx(1.1)
    # the answer tool ended it: its result is in the messages, not in the tokens
    assert_tokens_are_the_rendered_conversation(ep, tokenizer, ep.messages[:-1])
    tool_span = [t for t, g in zip(ep.token_ids, ep.generated, strict=True) if not g]
    assert "<tool_response>\n42\n</tool_response>" in tokenizer.decode(tool_span)


def test_malformed_and_unknown_calls_are_observed_and_the_episode_goes_on(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    unknown = '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>'
    ep = scripted(tokenizer, ["hmm <tool_call>{not json}</tool_call>", unknown, "It is 42"],
                  max_rounds=5)  # fmt: skip
    assert (ep.end, ep.rounds, ep.format_errors, ep.correct) == ("final_text", 3, 2, 1.0)
    observations = [m["content"] for m in ep.messages if m["role"] in ("user", "tool")][1:]
    assert "not valid JSON" in observations[0] and "unknown tool 'search'" in observations[1]
    assert ep.components["format"] == pytest.approx(-0.2)  # two malformed calls, no answer tool
    assert_tokens_are_the_rendered_conversation(ep, tokenizer, ep.messages)
    sampled = tokenizer.decode([t for t, g in zip(ep.token_ids, ep.generated, strict=True) if g])
    assert (
        sampled
        == f"hmm <tool_call>{{not json}}</tool_call><|im_end|>{unknown}<|im_end|>It is 42<|im_end|>"
    )


def test_a_cut_turn_is_closed_by_an_untrained_im_end(tokenizer: PreTrainedTokenizerFast) -> None:
    ep = scripted(tokenizer, [CALC + "|cut", ANSWER], max_rounds=3)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    first_turn_end = ep.generated.index(True) + len(tokenizer.encode(CALC))
    assert ep.token_ids[first_turn_end] == im_end and not ep.generated[first_turn_end]
    assert ep.end == "done" and ep.rounds == 2


def test_round_cap_and_repeat_penalties(tokenizer: PreTrainedTokenizerFast) -> None:
    cfg = RewardConfig(free_rounds=1, round_penalty=0.05)
    ep = scripted(tokenizer, [CALC], max_rounds=3, reward_config=cfg)
    assert (ep.end, ep.rounds) == ("max_rounds", 3)
    assert ep.components["round_penalty"] == pytest.approx(-0.1)
    assert ep.components["repetition_penalty"] == pytest.approx(-0.2)  # 2 repeated calls
    assert ep.correct == 0.0 and ep.r_proc == 1.0


def test_episodes_need_their_own_environments(tokenizer: PreTrainedTokenizerFast) -> None:
    env = ArithmeticEnv()
    engine = ScriptedEngine(tokenizer, lambda *_: "1")
    with pytest.raises(TrainingError, match="its own environment"):
        run_episodes(engine, [env, env], [TASK, TASK], tokenizer, max_rounds=1, max_new_tokens=4)


def test_batched_rounds_keep_each_episode_apart(tokenizer: PreTrainedTokenizerFast) -> None:
    # row 0 answers at once; row 1 calls the calculator first, then answers
    replies = {(1, 0): ANSWER, (1, 1): CALC, (2, 0): ANSWER}
    engine = ScriptedEngine(tokenizer, lambda n, row: replies[(n, row)])
    eps = run_episodes(engine, [ArithmeticEnv(), ArithmeticEnv()], [TASK, TASK], tokenizer,
                       max_rounds=3, max_new_tokens=64)  # fmt: skip
    assert [e.rounds for e in eps] == [1, 2] and engine.calls == 2
    assert all(e.correct == 1.0 for e in eps)


# ---- engines ----


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> nn.Module:
    return build_tiny_model(TinyModelSpec(vocab_size=len(tokenizer)), seed=0)


def teacher_forced(model: nn.Module, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[:, :-1] / temperature
    return token_log_probs(logits, torch.tensor([ids[1:]]))[0]


def test_engine_logprobs_equal_a_teacher_forced_pass(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = TransformersEngine(model, tokenizer)  # type: ignore[arg-type]
    prompts = [
        tokenizer.encode(t) for t in ("What is", "a much longer prompt than the others", "x")
    ]
    for temperature in (1.0, 0.7):
        gens = engine.generate(prompts, max_new_tokens=10, temperature=temperature, seed=1)
        for prompt, gen in zip(prompts, gens, strict=True):  # prompts were left-padded
            reference = teacher_forced(model, prompt + gen.token_ids, temperature)[
                len(prompt) - 1 :
            ]
            torch.testing.assert_close(torch.tensor(gen.logprobs), reference, atol=1e-5, rtol=0)
    again = engine.generate(prompts, max_new_tokens=10, seed=1)
    assert [g.token_ids for g in again] == [
        g.token_ids for g in engine.generate(prompts, max_new_tokens=10, seed=1)
    ]


def test_episode_logprobs_align_with_the_trained_tokens(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = TransformersEngine(model, tokenizer)  # type: ignore[arg-type]
    tasks = make_arithmetic_tasks(4, seed=0)
    eps = run_episodes(engine, [ArithmeticEnv() for _ in tasks], tasks, tokenizer, max_rounds=2,
                       max_new_tokens=12, seed=0)  # fmt: skip
    for ep in eps:
        assert 0 < ep.response_tokens <= 2 * 12 + 2
        reference = teacher_forced(model, ep.token_ids)
        trained = torch.tensor(ep.generated[1:])
        assert not ep.generated[0]  # the prompt comes first
        torch.testing.assert_close(torch.tensor(ep.logprobs[1:])[trained], reference[trained],
                                   atol=1e-5, rtol=0)  # fmt: skip
        assert all(lp == 0.0 for lp, g in zip(ep.logprobs, ep.generated, strict=True) if not g)


def test_vllm_engine_needs_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
        with pytest.raises(TrainingError, match=r"kap-training\[gpu\]"):
            VLLMEngine("/nonexistent", stop_token_ids=[2])
    else:
        pytest.skip("vllm is installed: tests/gpu covers the engine")
