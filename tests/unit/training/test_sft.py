"""Stage 1 SFT on a tiny Qwen3 on the CPU: the update, its invariants, learning, resume, config."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from kap.training.chat import Conversation, render_conversations
from kap.training.demo_data import demo_conversations
from kap.training.distributed import DistContext
from kap.training.modeling import load_model
from kap.training.runs import MemoryRecorder
from kap.training.sft import (
    LRSchedule,
    SFTConfig,
    SFTConfigError,
    accumulate_gradients,
    count_trained_tokens,
    make_micro_batches,
    sft_model,
    sft_tokenizer,
    step_sample_indices,
    train_sft,
)
from kap.training.tokenizer import corpus_texts, train_tokenizer

CPU = DistContext()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus_texts(limit=300), vocab_size=1024).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def conversations() -> list[Conversation]:
    return demo_conversations(160, seed=1)


def make_config(tokenizer_dir: Path, out: Path, **overrides: object) -> SFTConfig:
    base = SFTConfig(
        tokenizer=str(tokenizer_dir),
        output_dir=str(out),
        batch_size=8,
        max_length=1024,
        micro_batch_rows=4,
        lr=1e-3,
        warmup_steps=1,
        weight_decay=0.0,
        eval_fraction=0.0,
        eval_every=0,
        checkpoint_every=0,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def step_gradients(
    model: nn.Module, samples: list, *, packing: bool, rows: int, max_length: int = 1024
) -> tuple[float, int, dict[str, torch.Tensor]]:
    batches = make_micro_batches(
        samples, packing=packing, max_length=max_length, micro_batch_rows=rows, pad_token_id=0
    )
    n = count_trained_tokens(batches)
    model.zero_grad(set_to_none=True)
    loss_sum = accumulate_gradients(model, batches, packing=packing, num_trained_tokens=n)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss_sum / n, n, grads


def assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-4, msg=name)


# ---- the update ----


def test_every_trainable_parameter_changes_after_one_step(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    config = make_config(tokenizer_dir, tmp_path, lr=1e-5, max_steps=1)  # the paper's lr
    before = sft_model(config, sft_tokenizer(config, CPU), CPU).state_dict()
    result = train_sft(config, conversations[:16])
    assert result.steps == 1 and result.model_dir is not None
    after = load_model(result.model_dir).state_dict()
    params = dict(sft_model(config, sft_tokenizer(config, CPU), CPU).named_parameters())
    unchanged = [
        n for n, p in params.items() if p.requires_grad and torch.equal(before[n], after[n])
    ]
    assert not unchanged
    assert len(params) > 20


@pytest.mark.parametrize("packing", [True, False])
def test_gradient_accumulation_one_by_eight_equals_eight_by_one(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path, *, packing: bool
) -> None:
    config = make_config(tokenizer_dir, tmp_path, packing=packing)
    tokenizer = sft_tokenizer(config, CPU)
    samples = render_conversations(tokenizer, conversations[:8], max_length=1024)
    model = sft_model(config, tokenizer, CPU)
    loss_1, n_1, grads_1 = step_gradients(model, samples, packing=packing, rows=8)
    loss_8, n_8, grads_8 = step_gradients(model, samples, packing=packing, rows=1)
    assert n_1 == n_8 > 0
    assert loss_1 == pytest.approx(loss_8, rel=1e-6)
    assert_same_grads(grads_1, grads_8)


def test_gradient_accumulation_gives_the_same_weights_after_a_step(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    weights = []
    for rows in (8, 1):
        config = make_config(
            tokenizer_dir, tmp_path / f"rows{rows}", micro_batch_rows=rows, max_steps=1, lr=1e-4
        )
        result = train_sft(config, conversations[:8])
        assert result.model_dir is not None
        weights.append(load_model(result.model_dir).state_dict())
    # Adam's first step is ~lr·g/(|g| + eps): where |g| is near eps it magnifies the
    # summation-order noise of the gradient (~1e-9), hence a modest lr for an atol of 1e-6.
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], atol=1e-6, rtol=0, msg=name)


def test_packed_and_padded_training_agree(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    config = make_config(tokenizer_dir, tmp_path)
    tokenizer = sft_tokenizer(config, CPU)
    samples = render_conversations(tokenizer, conversations[8:16], max_length=1024)
    model = sft_model(config, tokenizer, CPU)
    packed = step_gradients(model, samples, packing=True, rows=2, max_length=2048)
    padded = step_gradients(model, samples, packing=False, rows=3)
    assert packed[1] == padded[1]  # same trained tokens: packing masks the sample boundaries
    assert packed[0] == pytest.approx(padded[0], rel=1e-5)
    assert_same_grads(packed[2], padded[2])
    batches = make_micro_batches(
        samples, packing=True, max_length=2048, micro_batch_rows=2, pad_token_id=0
    )
    assert sum(b["input_ids"].shape[0] for b in batches) <= len(samples) // 2  # it did pack


# ---- learning ----


def test_sft_lowers_held_out_loss_on_demo_conversations(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    config = make_config(
        tokenizer_dir,
        tmp_path,
        lr=1e-2,
        warmup_steps=2,
        max_steps=12,
        eval_fraction=0.1,
        eval_every=6,
    )
    recorder = MemoryRecorder()
    result = train_sft(config, conversations, recorder)
    assert recorder.status == "succeeded"
    assert [s for s, _ in recorder.series("loss")] == list(range(1, 13))
    assert [s for s, _ in result.eval_history] == [0, 6, 12]
    assert result.first_eval_loss is not None and result.last_eval_loss is not None
    # Measured: 6.94 (~ln 1024, a uniform guess) at step 0, 5.50 at 6, 5.05 after 12 steps.
    assert result.first_eval_loss == pytest.approx(math.log(1024), abs=0.1)
    assert result.last_eval_loss < result.first_eval_loss - 1.2
    metrics = dict(recorder.history[1][1])
    assert {
        "loss",
        "lr",
        "grad_norm",
        "trained_tokens",
        "tokens_per_s",
        "token_utilization",
    } <= metrics.keys()
    assert 0 < metrics["token_utilization"] <= 1 and metrics["samples"] == 8


# ---- resume ----


def test_resume_equals_a_straight_run(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    data = conversations[:40]  # 5 planned steps of 8: the schedule is the same in both runs
    straight = train_sft(make_config(tokenizer_dir, tmp_path / "a", max_steps=4), data)
    first = train_sft(make_config(tokenizer_dir, tmp_path / "b", max_steps=2), data)
    assert first.steps == 2
    recorder = MemoryRecorder()
    resumed = train_sft(make_config(tokenizer_dir, tmp_path / "b", max_steps=4), data, recorder)
    assert resumed.steps == 4
    assert [s for s, _ in recorder.series("loss")] == [3, 4]  # continued, not restarted
    assert straight.final_train_loss == resumed.final_train_loss
    assert straight.model_dir is not None and resumed.model_dir is not None
    a, b = load_model(straight.model_dir).state_dict(), load_model(resumed.model_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_or_data(
    tokenizer_dir: Path, conversations: list[Conversation], tmp_path: Path
) -> None:
    data = conversations[:16]
    train_sft(make_config(tokenizer_dir, tmp_path, max_steps=1), data)
    with pytest.raises(Exception, match=r"\['lr'\]"):
        train_sft(make_config(tokenizer_dir, tmp_path, max_steps=2, lr=5e-4), data)
    with pytest.raises(Exception, match="conversations differ"):
        train_sft(make_config(tokenizer_dir, tmp_path, max_steps=2), conversations[16:32])
    with pytest.raises(Exception, match="resume=True"):
        train_sft(make_config(tokenizer_dir, tmp_path, max_steps=2), data, resume=False)
    recorder = MemoryRecorder()
    with pytest.raises(Exception, match="differ"):
        train_sft(make_config(tokenizer_dir, tmp_path, lr=5e-4), data, recorder)
    assert recorder.status == "failed"


# ---- data order and schedule ----


def test_each_epoch_visits_every_conversation_once_in_a_seeded_order() -> None:
    config = SFTConfig(batch_size=16, epochs=2, seed=3)
    epoch = [step_sample_indices(s, 50, config) for s in range(4)]
    assert [len(b) for b in epoch] == [16, 16, 16, 2]  # the last batch is kept, not dropped
    assert Counter(i for b in epoch for i in b) == Counter(range(50))
    second = [i for s in range(4, 8) for i in step_sample_indices(s, 50, config)]
    assert sorted(second) == list(range(50)) and second != [i for b in epoch for i in b]
    assert step_sample_indices(5, 50, config) == step_sample_indices(5, 50, config)


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cosine = LRSchedule(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(14) == pytest.approx(0.1) and cosine(40) == pytest.approx(0.1)
    constant = LRSchedule(warmup_steps=2, total_steps=14, min_ratio=0.1, kind="constant")
    assert [constant(s) for s in (0, 1, 5, 13)] == [0.5, 1.0, 1.0, 1.0]


# ---- config ----


def test_bad_config_fields_are_named(tmp_path: Path) -> None:
    with pytest.raises(SFTConfigError, match=r"unknown field 'lrr' \(did you mean 'lr'\?\)"):
        SFTConfig.from_dict({"lrr": 1e-5})
    with pytest.raises(SFTConfigError, match=r"SFTConfig\.lr: expected float, got str"):
        SFTConfig.from_dict({"lr": "fast"})
    with pytest.raises(SFTConfigError, match=r"SFTConfig\.batch_size: expected int, got bool"):
        SFTConfig.from_dict({"batch_size": True})
    with pytest.raises(SFTConfigError, match=r"SFTConfig\.batch_size: must be >= 1, got 0"):
        SFTConfig(batch_size=0)
    with pytest.raises(SFTConfigError, match="lr_schedule"):
        SFTConfig(lr_schedule="linear")
    with pytest.raises(
        SFTConfigError, match=r"tiny_model: unknown TinyModelSpec field\(s\) \['layers'\]"
    ):
        SFTConfig(tiny_model={"layers": 2})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1.0e-5\nwarmup_steps: -1\n")
    with pytest.raises(SFTConfigError, match=rf"{bad}: SFTConfig\.warmup_steps: must be >= 0"):
        SFTConfig.from_yaml(bad)
    assert isinstance(SFTConfigError("x"), ValueError)


def test_defaults_are_the_papers_and_the_tiny_config_loads() -> None:
    config = SFTConfig()
    assert (config.lr, config.batch_size, config.epochs, config.max_length) == (1e-5, 16, 1, 131072)
    assert config.grad_clip == 1.0 and config.packing
    root = Path(__file__).resolve().parents[3]
    tiny = SFTConfig.from_yaml(root / "configs" / "train" / "sft-tiny.yaml")
    assert tiny.model == "tiny" and tiny.max_length <= 1024 and tiny.batch_size == 16
    assert SFTConfig.from_dict(tiny.to_dict()) == tiny
