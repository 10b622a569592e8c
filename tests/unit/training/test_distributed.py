"""The one-process context, and SFT under torchrun with two CPU ranks (gloo, FSDP2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kap.training.distributed import (
    DistContext,
    all_reduce_max,
    all_reduce_sum,
    decoder_layers,
    init_distributed,
    is_sharded,
    shard_model,
)
from kap.training.modeling import TinyModelSpec, build_tiny_model
from kap.training.tokenizer import corpus_texts, train_tokenizer

ROOT = Path(__file__).resolve().parents[3]
WORKER = ROOT / "tests" / "support" / "sft_worker.py"


def test_without_torchrun_it_is_one_process_and_collectives_are_no_ops() -> None:
    ctx = init_distributed(device="cpu", env={})
    assert ctx == DistContext(0, 1, 0, torch.device("cpu"))
    assert ctx.is_main and not ctx.is_distributed
    assert (
        init_distributed(device="cpu", env={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        == ctx
    )
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert all_reduce_max(t).tolist() == [1.0, 2.0]
    model = build_tiny_model(TinyModelSpec(vocab_size=50, num_layers=3), seed=0)
    assert shard_model(model, ctx, mixed_precision=True) is model and not is_sharded(model)
    assert len(decoder_layers(model)) == 3


def _run(out: Path, tokenizer: Path, steps: int, *, ranks: int) -> dict:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        if ranks > 1
        else [sys.executable]
    )
    done = subprocess.run(
        [*launcher, str(WORKER), str(out), str(tokenizer), str(steps)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_fsdp2_ranks_train_like_one_process_and_resume(tmp_path: Path) -> None:
    """Global-token normalisation x world size, idle micro-batches, sharded checkpoints."""
    tokenizer = tmp_path / "tok"
    train_tokenizer(corpus_texts(limit=200), vocab_size=1024).save_pretrained(tokenizer)
    one = _run(tmp_path / "one", tokenizer, 3, ranks=1)
    two = _run(tmp_path / "two", tokenizer, 2, ranks=2)  # sharded checkpoint at step 2
    two = _run(tmp_path / "two", tokenizer, 3, ranks=2)  # resumed from it, full model at the end
    assert two["sharded"] and not one["sharded"]
    assert [s for s, _ in two["loss"]] == [3]
    for (_, a), (_, b) in zip(
        one["loss"][2:] + one["grad_norm"][2:], two["loss"] + two["grad_norm"], strict=True
    ):
        assert a == pytest.approx(b, rel=1e-5)
    assert one["eval"][-1][1] == pytest.approx(two["eval"][-1][1], rel=1e-5)
    assert (
        tmp_path / "two" / "checkpoints" / "step-00000003" / "model" / "model.safetensors"
    ).is_file()
