"""SFT throughput, packed versus padded, side by side on the same conversations.

    uv run python benchmarks/sft_packing.py [--conversations 96] [--steps 6] [--repeats 2]
        [--max-length 2048] [--hidden 128] [--layers 2] [--device auto]

Both runs are `kap.training.sft.train_sft` on the same demo conversations (real MuSiQue
paragraphs in tool-using chats, 150-800 tokens), same tiny Qwen3, same batch of 16
conversations per step; they differ only in `packing`: first-fit-decreasing packs of at most
max_length tokens with per-sample attention, or one right-padded conversation per row. Reported
per method: real tokens per second (median over steps, step 1 excluded as warm-up), token
utilization (real tokens / row slots), rows per step, and the loss after the last step (the
same data and gradient, so the two should agree closely). Runs alternate (packed, padded,
packed, ...) so drift on a shared machine hits both. Prints a table and writes
benchmarks/results/sft_packing.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from kap.training.demo_data import demo_conversations
from kap.training.runs import MemoryRecorder
from kap.training.sft import SFTConfig, train_sft
from kap.training.tokenizer import corpus_texts, train_tokenizer

RESULTS = Path(__file__).parent / "results" / "sft_packing.json"
METHODS = {"packed": True, "padded": False}


def one_run(args: argparse.Namespace, tokenizer_dir: Path, *, packing: bool) -> dict[str, Any]:
    recorder = MemoryRecorder()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            tokenizer=str(tokenizer_dir), data=None, eval_fraction=0.0,
            tiny_model={"hidden_size": args.hidden, "num_layers": args.layers,
                        "num_heads": 4, "num_kv_heads": 2, "head_dim": args.hidden // 4,
                        "intermediate_size": 2 * args.hidden},
            batch_size=16, max_length=args.max_length, packing=packing,
            micro_batch_rows=args.micro_rows if packing else args.micro_rows * 2,
            max_steps=args.steps, lr=1e-3, warmup_steps=1, output_dir=out, checkpoint_every=0,
            eval_every=0, device=args.device, seed=0,
        )  # fmt: skip
        began = time.perf_counter()
        train_sft(config, demo_conversations(args.conversations, seed=1), recorder)
        wall = time.perf_counter() - began
    series = {name: [v for _, v in recorder.series(name)] for name in
              ("tokens_per_s", "token_utilization", "tokens", "loss")}  # fmt: skip
    return {
        "tokens_per_s": statistics.median(series["tokens_per_s"][1:] or series["tokens_per_s"]),
        "token_utilization": statistics.fmean(series["token_utilization"]),
        "tokens_per_step": statistics.fmean(series["tokens"]),
        "final_loss": series["loss"][-1],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--conversations", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--micro-rows",
        type=int,
        default=1,
        help="packs per micro-batch; padded rows take twice as many (about as many slots)",
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory() as tok_dir:
        train_tokenizer(corpus_texts(limit=600), vocab_size=2048).save_pretrained(tok_dir)
        for _ in range(args.repeats):
            for name, packing in METHODS.items():
                runs[name].append(one_run(args, Path(tok_dir), packing=packing))

    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    ratio = summary["packed"]["tokens_per_s"] / summary["padded"]["tokens_per_s"]
    table = Table("method", "real tokens/s", "token utilization", "tokens/step", "final loss",
                  "wall s", title="SFT: packed vs padded (medians over repeats)")  # fmt: skip
    for name, s in summary.items():
        table.add_row(name, f"{s['tokens_per_s']:,.0f}", f"{s['token_utilization']:.1%}",
                      f"{s['tokens_per_step']:,.0f}", f"{s['final_loss']:.4f}",
                      f"{s['wall_s']:.1f}")  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"packed / padded throughput: {ratio:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {"platform": platform.platform(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cuda": cuda}  # fmt: skip
    record = {"args": vars(args), "machine": machine, "runs": runs, "summary": summary,
              "packed_over_padded": ratio}  # fmt: skip
    RESULTS.write_text(json.dumps(record, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
