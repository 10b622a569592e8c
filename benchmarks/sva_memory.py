"""SVA loss memory: top-k path (hidden states + k rows of W) vs full logits, side by side.

    uv run python benchmarks/sva_memory.py [--tokens 4096] [--hidden 1024] [--vocab 151936]
        [--k 64] [--chunk-size 1024] [--device cpu|cuda] [--repeats 1]

One distillation step's loss at a real vocabulary: the teacher scores the tokens (no grad) and
the student's SVA loss is computed and back-propagated to its hidden states and output
embedding. "logits" builds both models' [tokens x V] logits and calls `sva_loss_from_logits`;
"top-k" calls `teacher_topk_from_hidden` and `sva_loss_from_topk`. Inputs (hidden states, both
output embeddings) are built before measuring; the peak is what the step adds on top of them,
including W's [V, H] gradient, which both paths must produce.

How peak memory is measured: each method runs in its own fresh subprocess so peaks never mix.
On CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was
allocated at the start. On CPU, the kernel's peak resident set size: the worker writes "5" to
/proc/self/clear_refs (resets VmHWM to the current RSS, Linux >= 4.0), runs the step, and
reports VmHWM minus the RSS at reset (falls back to the ru_maxrss delta where clear_refs is not
writable). Large torch CPU tensors are mmap-backed and written in full, so RSS follows them.
Prints a table and writes benchmarks/results/sva_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kap.training.objectives import (
    sva_loss_from_logits,
    sva_loss_from_topk,
    teacher_topk_from_hidden,
)

RESULTS = Path(__file__).parent / "results" / "sva_memory.json"
METHODS = ("logits", "top-k")
MiB = 1 << 20


# ---- measuring, inside a worker process ----


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMeter:
    """Peak bytes added between start() and stop(), on the given device (see module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.how = "cuda max_memory_allocated" if device.type == "cuda" else "VmHWM (clear_refs)"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = proc_status_kib("VmRSS") * 1024
        except OSError:
            self.how = "ru_maxrss delta"
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        if self.how == "ru_maxrss delta":
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
        return proc_status_kib("VmHWM") * 1024 - self.base


def make_inputs(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(args.seed)
    samples = max(1, args.tokens // 512)
    shape = (samples, args.tokens // samples, args.hidden)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device)

    scale = args.hidden**-0.5
    return {
        "student_hidden": randn(*shape).requires_grad_(),
        "student_weight": (randn(args.vocab, args.hidden) * scale).requires_grad_(),
        "teacher_hidden": randn(*shape),
        "teacher_weight": randn(args.vocab, args.hidden) * scale * 2,
        "mask": torch.ones(shape[:2], device=device),
        "domains": torch.arange(samples, device=device) % 3,
    }


def step(method: str, x: dict[str, torch.Tensor], k: int, chunk: int) -> torch.Tensor:
    if method == "logits":
        with torch.no_grad():
            teacher_logits = x["teacher_hidden"] @ x["teacher_weight"].T
        student_logits = x["student_hidden"] @ x["student_weight"].T
        loss = sva_loss_from_logits(student_logits, teacher_logits, x["mask"], x["domains"], k)
    else:
        ids, vals = teacher_topk_from_hidden(
            x["teacher_hidden"], x["teacher_weight"], k, token_chunk=chunk
        )
        loss = sva_loss_from_topk(
            x["student_hidden"],
            x["student_weight"],
            ids,
            vals,
            x["mask"],
            x["domains"],
            chunk_size=chunk,
        )
    torch.autograd.backward(loss)
    return loss.detach()


def worker(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    x = make_inputs(args, device)
    meter = PeakMeter(device)
    times, peaks, loss = [], [], float("nan")
    for _ in range(args.repeats):
        x["student_hidden"].grad = x["student_weight"].grad = None
        meter.start()
        began = time.perf_counter()
        loss = float(step(args.worker, x, args.k, args.chunk_size))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        peaks.append(meter.stop())
    out = {"loss": loss, "seconds": times, "peak_bytes": max(peaks), "how": meter.how}
    print(json.dumps(out))


# ---- driving: one subprocess per method ----


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    params = {name: value for name, value in vars(args).items() if name != "worker"}
    forwarded = [f"--{name.replace('_', '-')}={value}" for name, value in params.items()]
    command = [sys.executable, __file__, *forwarded, f"--worker={method}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {
        "node": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="response tokens in the step")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size H")
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary size V")
    parser.add_argument("--k", type=int, default=64, help="teacher top-k")
    parser.add_argument(
        "--chunk-size", type=int, default=1024, help="top-k path: tokens per chunk (both models)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1, help="steps per method (median time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    results = {method: run_method(method, args) for method in METHODS}
    box = machine(args.device)
    logits_bytes = args.tokens * args.vocab * 4
    print(f"\n{box['cpu']} ({box['cpus']} cpus)" + (f", {box['gpu']}" if box["gpu"] else ""))
    print(
        f"{args.tokens} tokens, H={args.hidden}, V={args.vocab}, k={args.k}, "
        f"top-k chunk {args.chunk_size} tokens, float32, "
        f"device {args.device}; one [tokens x V] fp32 tensor = {logits_bytes / MiB:,.0f} MiB; "
        f"peak by {results['logits']['how']}"
    )
    print(f"{'method':<10}{'peak MiB':>12}{'time s':>10}{'loss':>14}")
    for method, r in results.items():
        r["median_s"] = statistics.median(r["seconds"])
        peak = r["peak_bytes"] / MiB
        print(f"{method:<10}{peak:>12,.0f}{r['median_s']:>10.2f}{r['loss']:>14.6f}")
    ratio = results["logits"]["peak_bytes"] / max(results["top-k"]["peak_bytes"], 1)
    speed = results["logits"]["median_s"] / results["top-k"]["median_s"]
    print(f"logits / top-k: peak memory x{ratio:.1f}, time x{speed:.2f}")
    print(f"(both peaks include W's gradient, {args.vocab * args.hidden * 4 / MiB:,.0f} MiB)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {"peak_ratio": ratio, "time_ratio": speed}
    payload = {"params": vars(args) | {"worker": None}, "machine": box, "results": results}
    RESULTS.write_text(json.dumps(payload | summary, indent=2))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
