"""Stage 3 end to end on the CPU: on-policy rollouts in a tool environment, two teachers routed
by domain, and the student's reverse KL to them on held-out prompts before and after."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from kap.training.chat import render_conversation
from kap.training.distill import DistillConfig, train_distill
from kap.training.environments import ArithmeticEnv, Task, make_arithmetic_tasks
from kap.training.errors import TrainingError
from kap.training.modeling import TinyModelSpec, build_tiny_model
from kap.training.tokenizer import corpus_texts, default_corpus_paths, train_tokenizer

DOMAINS = ("tools", "plain")
STEPS, LR = 12, 5e-3


def env_of(domain: str) -> ArithmeticEnv:
    """The domains' prompts differ (as real domains' do), so one student can serve both."""
    if domain == "tools":
        return ArithmeticEnv(with_calculator=True)
    return ArithmeticEnv(with_calculator=False, system_prompt="Reply with the number only.")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(corpus_texts(default_corpus_paths(), limit=200), vocab_size=600)


def spec(tokenizer: PreTrainedTokenizerFast) -> TinyModelSpec:
    return TinyModelSpec(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=16, intermediate_size=64,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip


def tasks(n: int, seed: int) -> list[Task]:
    """Arithmetic tasks, half of them labelled for each domain."""
    made = make_arithmetic_tasks(n, seed=seed, max_operand=4)
    return [dataclasses.replace(t, domain=DOMAINS[i % 2]) for i, t in enumerate(made)]


def fit(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    conversations: list[tuple[str, list[dict[str, Any]]]],
    steps: int,
) -> torch.nn.Module:
    """Next-token CE on (domain, messages) conversations: `steps` full-batch AdamW steps."""
    samples = [render_conversation(tokenizer, messages, tools=env_of(domain).tools())
               for domain, messages in conversations]  # fmt: skip
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), tokenizer.pad_token_id)
    labels = torch.full((len(samples), width), -100)
    for row, s in enumerate(samples):
        ids[row, : len(s.input_ids)] = torch.tensor(s.input_ids)
        labels[row, : len(s.labels)] = torch.tensor(s.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def fit_teacher(tokenizer: PreTrainedTokenizerFast, domain: str, seed: int) -> torch.nn.Module:
    """A teacher with a habit of its own: the `tools` one answers through the answer tool,
    the `plain` one in plain digits."""
    conversations = []
    for task in tasks(24, seed=seed):
        reply: dict[str, Any] = {"role": "assistant", "content": task.answer}
        if domain == "tools":
            call = {"name": "answer", "arguments": json.dumps({"text": task.answer})}
            tool_calls = [{"id": "c0", "type": "function", "function": call}]
            reply = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        conversations.append((domain, [*env_of(domain).reset(task), reply]))
    return fit(build_tiny_model(spec(tokenizer), seed=seed), tokenizer, conversations, steps=40)


def sft_student(tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    """Stage 3 starts from the stage-1 model: here one briefly fit to a reply style of its own
    ("The answer is N."), in both domains, that neither teacher has."""
    conversations = []
    for i, task in enumerate(tasks(24, seed=3)):
        domain = DOMAINS[i % 2]
        reply = {"role": "assistant", "content": f"The answer is {task.answer}."}
        conversations.append((domain, [*env_of(domain).reset(task), reply]))
    return fit(build_tiny_model(spec(tokenizer), seed=0), tokenizer, conversations, steps=20)


def test_distillation_lowers_reverse_kl_to_each_teacher(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    teachers = {d: fit_teacher(tokenizer, d, seed=10 + i) for i, d in enumerate(DOMAINS)}
    student = sft_student(tokenizer)
    config = DistillConfig(steps=STEPS, tasks_per_step=8, max_rounds=1, max_new_tokens=16, k=16,
                           micro_batch_size=4, lr=LR, seed=0)  # fmt: skip
    logged: list[tuple[int, dict[str, float]]] = []
    result = train_distill(
        config,
        student,
        tokenizer,
        teachers,
        env_of,
        tasks(32, seed=1),
        held_out=tasks(8, seed=2),
        metrics=lambda step, values: logged.append((step, dict(values))),
    )
    # Measured (torch 2.x, CPU): truncated KL plain 2.36 -> 0.86, tools 3.97 -> 2.76; full-
    # vocabulary KL plain 10.1 -> 8.2, tools 6.3 -> 3.6. Floors below, with margin.
    before, after = result.held_out_before, result.held_out_after
    for domain in DOMAINS:
        assert after[f"kl/{domain}"] < 0.8 * before[f"kl/{domain}"], result
        assert after[f"full_kl/{domain}"] < 0.9 * before[f"full_kl/{domain}"], result
    per_step = [values for step, values in logged if "loss" in values]
    assert len(per_step) == config.steps
    assert all(f"kl/{d}" in per_step[0] and f"topk_mass/{d}" in per_step[0] for d in DOMAINS)
    assert all(0 < v["topk_mass/tools"] <= 1 for v in per_step)


def test_a_domain_without_a_teacher_is_refused(tokenizer: PreTrainedTokenizerFast) -> None:
    student = build_tiny_model(spec(tokenizer), seed=0)
    with pytest.raises(TrainingError, match="no teacher"):
        train_distill(DistillConfig(steps=1), student, tokenizer, {"tools": student},
                      lambda d: ArithmeticEnv(), tasks(4, seed=0))  # fmt: skip


def test_config_errors_name_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "distill.yaml"
    path.write_text("distill:\n  stepz: 3\n")
    with pytest.raises(TrainingError, match="did you mean 'steps'"):
        DistillConfig.from_yaml(path)
    path.write_text("distill:\n  k: 0\n")
    with pytest.raises(TrainingError, match="k=0"):
        DistillConfig.from_yaml(path)
