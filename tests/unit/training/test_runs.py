"""Run recording without a database (JSONL, memory, fan-out) and checkpoint round trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kap.training.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from kap.training.errors import CheckpointError, TrainingError
from kap.training.modeling import TinyModelSpec, build_tiny_model, load_model
from kap.training.runs import (
    JsonlRecorder,
    MemoryRecorder,
    MultiRecorder,
    NullRecorder,
    RunRecorder,
    read_jsonl_metrics,
)
from kap.training.sft import LRSchedule

SPEC = TinyModelSpec(vocab_size=97)


# ---- recorders ----


def test_jsonl_recorder_writes_one_line_per_call_and_appends_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    first = JsonlRecorder(path, config={"lr": 1e-5})
    first.log(1, {"loss": 2.5, "lr": 1e-5})
    first.log(2, {"loss": torch.tensor(2.0).item(), "tokens": 17})
    first.finish("cancelled")
    again = JsonlRecorder(path)  # a resumed run appends
    again.log(2, {"loss": 1.75})
    again.finish("succeeded")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in lines] == [
        "start",
        "metrics",
        "metrics",
        "finish",
        "metrics",
        "finish",
    ]
    assert lines[0]["config"] == {"lr": 1e-5}
    assert lines[-1]["status"] == "succeeded" and "time" in lines[-1]
    assert read_jsonl_metrics(path) == [
        (1, {"loss": 2.5, "lr": 1e-5}),
        (2, {"loss": 2.0, "tokens": 17.0}),
        (2, {"loss": 1.75}),
    ]


def test_recorders_fan_out_and_refuse_unknown_statuses(tmp_path: Path) -> None:
    memory, path = MemoryRecorder(), tmp_path / "m.jsonl"
    both = MultiRecorder(memory, JsonlRecorder(path))
    for rec in (memory, both, NullRecorder(), JsonlRecorder(path)):
        assert isinstance(rec, RunRecorder)
    both.log(3, {"loss": 1.0, "eval_loss": 1.5})
    both.log(4, {"loss": 0.5})
    both.finish("succeeded")
    assert memory.series("loss") == [(3, 1.0), (4, 0.5)]
    assert memory.series("eval_loss") == [(3, 1.5)]
    assert memory.status == "succeeded"
    assert len(read_jsonl_metrics(path)) == 2
    for rec in (memory, NullRecorder(), JsonlRecorder(path)):
        with pytest.raises(TrainingError, match="unknown run status 'done'"):
            rec.finish("done")


# ---- checkpoints ----


def _train_a_little(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: object) -> None:
    for _ in range(2):
        ids = torch.randint(0, SPEC.vocab_size, (2, 9))
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
        opt.zero_grad()


def _setup(spec: TinyModelSpec, seed: int) -> tuple[torch.nn.Module, torch.optim.AdamW, object]:
    model = build_tiny_model(spec, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LRSchedule(2, 10, 0.1))
    return model, opt, sched


@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_round_trip_restores_weights_optimizer_schedule_rng(
    tmp_path: Path, *, tied: bool
) -> None:
    spec = TinyModelSpec(vocab_size=97, tie_word_embeddings=tied)
    model, opt, sched = _setup(spec, seed=0)
    _train_a_little(model, opt, sched)
    state = TrainState(
        step=2,
        consumed_samples=32,
        consumed_packs=5,
        trained_tokens=900,
        eval_history=[[0, 4.5], [2, 4.0]],
        extra={"data_hash": "abc"},
    )
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    path = save_checkpoint(
        tmp_path, model=model, optimizer=opt, scheduler=sched, state=state, config={"lr": 1e-3}
    )
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))
    assert path == tmp_path / "checkpoints" / "step-00000002"
    assert latest_checkpoint(tmp_path) == path

    fresh, fresh_opt, fresh_sched = _setup(spec, seed=1)
    loaded = load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert loaded.state == state and loaded.config == {"lr": 1e-3}
    assert (random.random(), float(np.random.rand())) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_sched.state_dict()["last_epoch"] == 2  # type: ignore[attr-defined]
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], fresh_opt.state[q][key])
    # model/ is an ordinary HF checkpoint (tied weights included)
    hf = load_model(path / "model")
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tied
    # the same next step from both
    torch.manual_seed(5)
    _train_a_little(model, opt, sched)
    torch.manual_seed(5)
    _train_a_little(fresh, fresh_opt, fresh_sched)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True)
    )


def test_checkpoints_are_atomic_pruned_and_ordered(tmp_path: Path) -> None:
    model, opt, sched = _setup(SPEC, seed=0)
    for step in (1, 2, 3):
        save_checkpoint(
            tmp_path,
            model=model,
            optimizer=opt,
            scheduler=sched,
            state=TrainState(step=step),
            config={},
            keep=2,
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    # a save that died half-way leaves a .tmp- directory (or one without state.json): ignored
    (tmp_path / "checkpoints" / ".tmp-step-00000004" / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000005").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000003"
    # re-saving a step replaces it, and the leftover temporary directory is cleared
    save_checkpoint(
        tmp_path,
        model=model,
        optimizer=opt,
        scheduler=sched,
        state=TrainState(step=4, consumed_samples=9),
        config={},
    )
    assert read_checkpoint_meta(latest_checkpoint(tmp_path)).state.consumed_samples == 9  # type: ignore[arg-type]
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000004").exists()
    assert latest_checkpoint(tmp_path / "nowhere") is None
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint_meta(tmp_path / "checkpoints" / "step-00000005")
