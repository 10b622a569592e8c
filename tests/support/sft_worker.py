"""A tiny SFT run for the distributed test: `[torchrun ...] sft_worker.py OUT TOKENIZER STEPS`.

Rank 0 prints one JSON line: the losses and grad norms it recorded, the held-out history, and
whether the model was sharded.
"""

from __future__ import annotations

import json
import sys

import torch

from kap.training.demo_data import demo_conversations
from kap.training.distributed import destroy_distributed, init_distributed
from kap.training.runs import MemoryRecorder
from kap.training.sft import SFTConfig, train_sft


def main() -> None:
    out, tokenizer, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    ctx = init_distributed(device="cpu")
    config = SFTConfig(
        output_dir=out,
        tokenizer=tokenizer,
        batch_size=5,  # odd: ranks get 3 and 2 conversations, so micro-batch counts differ
        max_length=1024,
        micro_batch_rows=1,
        lr=1e-3,
        warmup_steps=1,
        eval_fraction=0.15,
        eval_every=0,
        checkpoint_every=2,
        max_steps=steps,
        mixed_precision=False,
    )
    recorder = MemoryRecorder()
    train_sft(config, demo_conversations(30, seed=3), recorder, ctx=ctx)
    if ctx.is_main:
        report = {
            "loss": recorder.series("loss"),
            "grad_norm": recorder.series("grad_norm"),
            "eval": recorder.series("eval_loss"),
            "sharded": ctx.is_distributed,
        }
        print(json.dumps(report))
    destroy_distributed()


if __name__ == "__main__":
    main()
