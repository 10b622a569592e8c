"""Stage 1: full-domain SFT — cross-entropy on assistant tokens of packed tool-using conversations.

    kap train sft --config configs/train/sft-tiny.yaml                        # 1 process (CPU/GPU)
    torchrun --standalone --nproc-per-node 1 -m kap.training.cli sft --config FILE     # 1 GPU
    torchrun --standalone --nproc-per-node 8 -m kap.training.cli sft --config FILE     # 8 GPUs
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m kap.training.cli sft --config FILE              # 2 nodes

`train_sft(config, conversations, recorder)` is the whole algorithm; the command line decides
where the conversations come from (`load_sft_data` reads the config's JSONL files; dataset
snapshots from Postgres plug in at the same seam) and which recorder gets the metrics. Under
torchrun every rank calls it with the same conversations; each trains on its share.

One optimizer step, in the order of the `# ----` sections of the loop:
1. batch: the next `batch_size` (16) conversations of this epoch's seeded permutation — the
   batch is global, counted in conversations; rank r takes conversations r, r+W, r+2W, … of it.
2. render + pack: chat template with loss masks (`kap.training.chat`), truncated to max_length;
   first-fit-decreasing into packs of at most max_length tokens (`kap.training.packing`), or,
   with `packing: false`, one right-padded conversation per row; rows go through the model in
   micro-batches of `micro_batch_rows`.
3. count: N = loss-bearing tokens of the step over all micro-batches and ranks (all-reduced
   before any forward).
4. forward/backward per micro-batch: `forward_packed` (no attention mask, no cache: attention
   never crosses samples), `masked_token_ce(logits[:, :-1], labels[:, 1:])`, backward of
   loss_sum / N · W. Summed over micro-batches and ranks, the gradient is that of the mean
   token loss of the whole step, however the step is split (W: FSDP2 averages gradients over
   the W ranks, so each rank's share is scaled back up). Ranks with fewer micro-batches run
   idle ones (no trained token) so every rank makes the same collective calls.
5. optimizer: clip the global gradient norm, AdamW (fused on CUDA), LR schedule, zero grads.
6. metrics (rank 0): loss, lr, grad_norm, trained_tokens, tokens, tokens_per_s,
   token_utilization (real tokens / row slots), samples, truncated, epoch.
7. eval at step 0, every eval_every steps and at the end: mean token loss on held-out
   conversations; checkpoint every checkpoint_every steps and at the end. With `resume`, a call
   continues from the latest checkpoint in output_dir at the exact next conversation.

Deviations from the paper, and choices it leaves open:
- "batch 16" is read as 16 conversations (sequences) per optimizer step, whatever their length;
  the loss is the mean over the step's trained tokens (a long conversation weighs in proportion
  to its assistant tokens), not a mean of per-conversation means.
- the paper gives only lr 1e-5; here: linear warmup (warmup_steps) then cosine decay to
  min_lr_ratio·lr over all planned steps (`lr_schedule: constant` keeps lr after warmup);
  AdamW betas (0.9, 0.95), eps 1e-8, decoupled weight decay 0.1 on matrices only, grad clip 1.0.
- conversations longer than max_length are cut from the right (counted in `truncated`), not
  dropped; the last batch of an epoch may hold fewer than batch_size conversations.
- a held-out split (eval_fraction of the data, at most max_eval_conversations) is taken out of
  training unless held-out conversations are given; its loss is the metric `eval_loss`.
- weights are float32 (the optimizer's master copy); on CUDA, mixed_precision computes in
  bfloat16 (autocast with one process, FSDP2's MixedPrecisionPolicy when sharded).
- varlen attention needs flash_attn on CUDA; without it sdpa builds a block-diagonal
  [L, L] mask per row, fine for short packs but not for 131072. The full [tokens x vocabulary]
  logits are materialised for the loss: at Qwen3's vocabulary and 131072-token packs that needs
  a chunked/fused cross-entropy (kap.kernels), not wired in here yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from kap.training.chat import IGNORE_INDEX, Conversation, RenderedSample, render_conversations
from kap.training.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from kap.training.config import ConfigError, config_from_mapping, config_from_yaml, config_to_dict
from kap.training.distributed import (
    DistContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    set_gradient_sync,
    shard_model,
)
from kap.training.errors import TrainingError
from kap.training.modeling import TinyModelSpec, load_model
from kap.training.objectives import masked_token_ce
from kap.training.packing import collate_packed, collate_padded, forward_packed, pack_samples
from kap.training.runs import NullRecorder, RunRecorder, finishing
from kap.training.tokenizer import corpus_texts, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)


class SFTConfigError(ConfigError):
    """A config field is unknown, of the wrong type or out of range; the message names it."""


# ---- config ----


@dataclass(frozen=True)
class SFTConfig:
    """Stage 1 settings; defaults are the paper's (DESIGN §7) where it gives one."""

    # model and tokenizer
    model: str = "tiny"  # "tiny" (random-weight Qwen3 from tiny_model) or a local HF checkpoint dir
    tiny_model: dict[str, Any] = field(default_factory=dict)  # TinyModelSpec fields for "tiny";
    # vocab_size, pad/eos ids default to the tokenizer's
    tokenizer: str | None = None  # local tokenizer dir; None: the checkpoint's own, or for "tiny"
    # a byte-level BPE trained on tokenizer_corpus (saved to output_dir/tokenizer, reused on resume)
    tokenizer_corpus: tuple[str, ...] = ()  # {"title","text"} JSON/JSONL files; (): MuSiQue corpus
    tokenizer_corpus_limit: int | None = 600  # records read per corpus file for the BPE
    tokenizer_vocab_size: int = 2048  # BPE vocabulary, special tokens included
    # data (train_sft is handed conversations; these paths are for the command line)
    data: str | None = None  # JSONL of {"messages", "tools"?, "domain"?, "id"?} conversations
    eval_data: str | None = None  # JSONL of held-out conversations; None: split off eval_fraction
    eval_fraction: float = 0.02  # share of the conversations held out when none are given (0: none)
    max_eval_conversations: int = 256  # cap on that held-out split
    # batch
    batch_size: int = 16  # conversations per optimizer step, global (over all ranks)
    max_length: int = 131072  # tokens per conversation (cut from the right) and per pack
    packing: bool = True  # pack conversations into rows of max_length; false: one padded per row
    micro_batch_rows: int = 1  # rows per forward/backward: packs, or conversations if not packing
    epochs: int = 1  # passes over the training conversations (a new seeded order each)
    max_steps: int | None = None  # stop after this many optimizer steps; the LR schedule still
    # spans all epochs, so a stopped run resumes exactly where a longer one would be
    # optimization
    lr: float = 1e-5  # peak learning rate (paper: 1e-5)
    lr_schedule: str = "cosine"  # "cosine" (to min_lr_ratio·lr) or "constant", after warmup
    warmup_steps: int = 10  # linear warmup from lr/warmup_steps to lr
    min_lr_ratio: float = 0.1  # the cosine ends at this fraction of lr
    weight_decay: float = 0.1  # AdamW decoupled decay, on matrices only (not norms)
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.95  # AdamW second-moment decay
    adam_eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # max global L2 norm of the gradient (0: no clipping)
    seed: int = 0  # data order, held-out split, tiny model weights
    # hardware
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if CUDA is available, else cpu), or explicit
    mixed_precision: bool = True  # bfloat16 compute on CUDA, float32 weights; ignored on CPU
    gradient_checkpointing: bool = False  # recompute activations in backward (long contexts)
    # bookkeeping
    output_dir: str = "runs/sft"  # checkpoints/, tokenizer/ (for a trained BPE)
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    eval_every: int = 100  # steps between held-out evaluations (0: only at start and end)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SFTConfig:
        """A config from plain values (YAML); unknown names and wrong types raise SFTConfigError."""
        return config_from_mapping(cls, values, error=SFTConfigError)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SFTConfig:
        """A config from a YAML mapping (or its `sft:` section); errors name the file and field."""
        return config_from_yaml(cls, path, section="sft", error=SFTConfigError)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (what checkpoints and run rows store)."""
        return config_to_dict(self)


_TINY_FIELDS = {f.name for f in dataclasses.fields(TinyModelSpec)}
# Checks as (field, ok(value), what is required).
_RANGES: list[tuple[str, Any, str]] = [
    ("lr", lambda v: v > 0, "> 0"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("max_length", lambda v: v >= 2, ">= 2"),
    ("micro_batch_rows", lambda v: v >= 1, ">= 1"),
    ("epochs", lambda v: v >= 1, ">= 1"),
    ("max_steps", lambda v: v is None or v >= 1, "None or >= 1"),
    ("lr_schedule", lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    ("warmup_steps", lambda v: v >= 0, ">= 0"),
    ("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_eps", lambda v: v > 0, "> 0"),
    ("grad_clip", lambda v: v >= 0, ">= 0"),
    ("eval_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("max_eval_conversations", lambda v: v >= 0, ">= 0"),
    ("checkpoint_every", lambda v: v >= 0, ">= 0"),
    ("keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("eval_every", lambda v: v >= 0, ">= 0"),
    ("tokenizer_vocab_size", lambda v: v > 300, "> 300"),
    ("model", lambda v: bool(v), "non-empty"),
    ("output_dir", lambda v: bool(v), "non-empty"),
]


def _validate(config: SFTConfig) -> None:
    for name, ok, what in _RANGES:
        value = getattr(config, name)
        if not ok(value):
            raise SFTConfigError(f"SFTConfig.{name}: must be {what}, got {value!r}")
    unknown = set(config.tiny_model) - _TINY_FIELDS
    if unknown:
        raise SFTConfigError(
            f"SFTConfig.tiny_model: unknown TinyModelSpec field(s) {sorted(unknown)}"
        )
    if config.tiny_model and config.model != "tiny":
        raise SFTConfigError("SFTConfig.tiny_model: only used with model: tiny")


# Fields a resumed run may change; any other difference from the checkpoint's config is refused.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "output_dir",
        "data",
        "eval_data",
        "device",
    }
)


@dataclass(frozen=True)
class SFTResult:
    """What a `train_sft` call did."""

    steps: int  # optimizer steps completed by the run (resumed ones included)
    final_train_loss: float | None  # loss of the last step this call ran (None: it ran none)
    first_eval_loss: float | None  # held-out loss at the run's first evaluation (step 0)
    last_eval_loss: float | None  # held-out loss at the last evaluation
    checkpoint_dir: Path | None  # the newest checkpoint
    model_dir: Path | None  # its HF model directory (load_model reads it)
    eval_history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)


# ---- data ----


def load_sft_data(config: SFTConfig) -> tuple[list[Conversation], list[Conversation] | None]:
    """The training and (optional) held-out conversations named by `config.data`/`eval_data`."""
    from kap.training.chat import load_conversations_jsonl

    if config.data is None:
        raise SFTConfigError("SFTConfig.data: no conversations JSONL given")
    held_out = None if config.eval_data is None else load_conversations_jsonl(config.eval_data)
    return load_conversations_jsonl(config.data), held_out


def conversations_hash(conversations: Sequence[Conversation]) -> str:
    """sha256 over the conversations' JSON (order matters): resume refuses other data."""
    digest = hashlib.sha256()
    for conv in conversations:
        record = [conv.messages, conv.tools, conv.domain, conv.id]
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def split_held_out(n: int, config: SFTConfig) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded random eval_fraction of n, capped; train keeps order."""
    n_eval = min(round(n * config.eval_fraction), config.max_eval_conversations)
    if config.eval_fraction > 0 and n > 1:
        n_eval = max(n_eval, 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 7919))
    held = set(order[:n_eval].tolist())
    return [i for i in range(n) if i not in held], sorted(held)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def step_sample_indices(step: int, n_train: int, config: SFTConfig) -> list[int]:
    """Positions (into the training list) of the conversations of optimizer step `step` (0-based).

    Epoch e visits the conversations in `randperm(n_train, seed + e)` order, batch_size at a time.
    """
    per_epoch = steps_per_epoch(n_train, config.batch_size)
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(config.seed + epoch))
    return order[k * config.batch_size : (k + 1) * config.batch_size].tolist()


# ---- micro-batches and the loss ----


def make_micro_batches(
    samples: Sequence[RenderedSample],
    *,
    packing: bool,
    max_length: int,
    micro_batch_rows: int,
    pad_token_id: int,
) -> list[dict[str, Tensor]]:
    """Rows of one step — packs (first-fit-decreasing) or single padded conversations — in
    groups of `micro_batch_rows`, collated for `micro_batch_loss`."""
    if not samples:
        return []
    r = micro_batch_rows
    if packing:
        packs = pack_samples(samples, max_length)
        return [
            collate_packed(packs[i : i + r], pad_token_id=pad_token_id)
            for i in range(0, len(packs), r)
        ]
    return [
        collate_padded(samples[i : i + r], pad_token_id=pad_token_id)
        for i in range(0, len(samples), r)
    ]


def idle_micro_batch(pad_token_id: int, *, packing: bool) -> dict[str, Tensor]:
    """Two pad tokens, nothing trained: what a rank runs when the others have more micro-batches."""
    ids = torch.full((1, 2), pad_token_id, dtype=torch.long)
    batch = {
        "input_ids": ids,
        "labels": torch.full_like(ids, IGNORE_INDEX),
        "token_mask": torch.zeros_like(ids, dtype=torch.bool),
    }
    if packing:
        batch |= {
            "position_ids": torch.arange(2)[None],
            "cu_seq_lens": torch.tensor([0, 2], dtype=torch.int32),
            "max_seq_len": torch.tensor(2),
        }
    else:
        batch["attention_mask"] = torch.ones_like(ids)
    return batch


def count_trained_tokens(batches: Sequence[Mapping[str, Tensor]]) -> int:
    """Loss-bearing positions after the shift (labels[:, 1:] != -100), summed over `batches`."""
    return sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def micro_batch_loss(
    model: nn.Module, batch: Mapping[str, Tensor], *, packing: bool
) -> tuple[Tensor, Tensor]:
    """(Σ token cross-entropy, trained-token count) of one micro-batch, next-token shifted."""
    if packing:
        logits = forward_packed(model, batch).logits
    else:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        logits = model(**inputs, use_cache=False).logits
    return masked_token_ce(logits[:, :-1], batch["labels"][:, 1:])


def _to(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulate_gradients(
    model: nn.Module,
    batches: Sequence[Mapping[str, Tensor]],
    *,
    packing: bool,
    num_trained_tokens: int,
    loss_scale: float = 1.0,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> float:
    """Backward of Σ_mb loss_sum_mb · loss_scale / num_trained_tokens; returns Σ loss_sum.

    `num_trained_tokens` is the step's global count (all micro-batches, all ranks), so the
    accumulated gradient does not depend on how the step is split; `loss_scale` is the world
    size under FSDP2 (which averages gradients over ranks).
    """
    device = next(model.parameters()).device
    total = 0.0
    scale = loss_scale / max(num_trained_tokens, 1)
    for i, batch in enumerate(batches):
        set_gradient_sync(model, enabled=i == len(batches) - 1)
        with autocast or contextlib.nullcontext():
            loss_sum, _ = micro_batch_loss(model, _to(batch, device), packing=packing)
        torch.autograd.backward(loss_sum * scale)
        total += float(loss_sum.detach())
    return total


# ---- optimizer and schedule ----


@dataclass(frozen=True)
class LRSchedule:
    """Multiplier of the peak lr at optimizer step s (0-based): linear warmup, then cosine/const."""

    warmup_steps: int
    total_steps: int
    min_ratio: float
    kind: str = "cosine"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: SFTConfig) -> torch.optim.AdamW:
    """AdamW with decay on matrices (ndim >= 2) only; fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    on_cuda = params[0].device.type == "cuda"
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        fused=on_cuda or None,
    )


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Global gradient L2 norm before clipping (clipping skipped when max_norm is 0)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
    return float(full_tensor() if full_tensor is not None else norm)


# ---- setup ----


def sft_tokenizer(config: SFTConfig, ctx: DistContext) -> PreTrainedTokenizerBase:
    """The run's tokenizer: config.tokenizer, the checkpoint's, or the BPE in output_dir/tokenizer
    (trained on the first call, on rank 0)."""
    if config.tokenizer is not None:
        return load_tokenizer(config.tokenizer)
    if config.model != "tiny":
        return load_tokenizer(config.model)
    saved = Path(config.output_dir) / "tokenizer"
    if ctx.is_main and not (saved / "tokenizer_config.json").is_file():
        paths = list(config.tokenizer_corpus) or None
        texts = corpus_texts(paths, limit=config.tokenizer_corpus_limit)
        train_tokenizer(texts, vocab_size=config.tokenizer_vocab_size).save_pretrained(saved)
    barrier()
    return load_tokenizer(saved)


def sft_model(config: SFTConfig, tokenizer: PreTrainedTokenizerBase, ctx: DistContext) -> nn.Module:
    """The model to train, float32 on ctx.device, in train mode, FSDP2-sharded when distributed."""
    source: str | TinyModelSpec = config.model
    if config.model == "tiny":
        defaults = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        source = TinyModelSpec(**(defaults | config.tiny_model))
    model = load_model(source, dtype=torch.float32, device=ctx.device, seed=config.seed)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return shard_model(model, ctx, mixed_precision=config.mixed_precision)


def _autocast(
    config: SFTConfig, ctx: DistContext, model: nn.Module
) -> contextlib.AbstractContextManager[Any]:
    from kap.training.distributed import is_sharded

    if ctx.device.type == "cuda" and config.mixed_precision and not is_sharded(model):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_resumable(
    saved: Mapping[str, Any], config: SFTConfig, data_hash: str, extra: Mapping[str, Any]
) -> None:
    now = config.to_dict()
    changed = sorted(
        k
        for k in now.keys() | saved.keys()
        if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k)
    )
    if changed:
        raise TrainingError(
            f"cannot resume: config fields {changed} differ from the checkpoint's "
            f"(only {sorted(RESUMABLE_CHANGES)} may change)"
        )
    if extra.get("data_hash") != data_hash:
        raise TrainingError(
            "cannot resume: the training conversations differ from the checkpoint's"
        )


# ---- evaluation ----


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    samples: Sequence[RenderedSample],
    config: SFTConfig,
    *,
    pad_token_id: int,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> float:
    """Mean token cross-entropy over `samples` (this rank's share), averaged over all ranks."""
    model.eval()
    batches = make_micro_batches(
        samples,
        packing=config.packing,
        max_length=config.max_length,
        micro_batch_rows=config.micro_batch_rows,
        pad_token_id=pad_token_id,
    )
    batches += _idle_batches(
        len(batches), pad_token_id, packing=config.packing, device=_device(model)
    )
    device = _device(model)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in batches:
        with autocast or contextlib.nullcontext():
            loss_sum, count = micro_batch_loss(model, _to(batch, device), packing=config.packing)
        totals += torch.stack([loss_sum.double(), count.double()])
    all_reduce_sum(totals)
    model.train()
    return float(totals[0] / totals[1].clamp_min(1))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _idle_batches(
    have: int, pad_token_id: int, *, packing: bool, device: torch.device
) -> list[dict[str, Tensor]]:
    """Idle micro-batches that bring this rank up to the most micro-batches of any rank."""
    most = int(all_reduce_max(torch.tensor(have, device=device)))
    return [idle_micro_batch(pad_token_id, packing=packing) for _ in range(most - have)]


# ---- the loop ----


def train_sft(
    config: SFTConfig,
    conversations: Sequence[Conversation],
    recorder: RunRecorder | None = None,
    *,
    eval_conversations: Sequence[Conversation] | None = None,
    resume: bool = True,
    ctx: DistContext | None = None,
) -> SFTResult:
    """Run Stage 1 SFT on `conversations`; metrics go to `recorder` on rank 0.

    `eval_conversations`: the held-out set (default: a seeded split of `conversations`).
    `resume`: continue from the newest checkpoint in `config.output_dir` (its config may differ
    only in RESUMABLE_CHANGES, its data not at all); with `resume=False` an output_dir that
    already holds checkpoints is refused. `ctx`: from `init_distributed()` when not given.
    The recorder is finished here: "succeeded", "failed" (an exception) or "cancelled" (Ctrl-C).
    """
    ctx = ctx or init_distributed(device=config.device)
    rec: RunRecorder = recorder if recorder is not None and ctx.is_main else NullRecorder()
    with finishing(rec):
        return _train(config, conversations, rec, eval_conversations, resume=resume, ctx=ctx)


def _split(
    conversations: Sequence[Conversation],
    eval_conversations: Sequence[Conversation] | None,
    config: SFTConfig,
) -> tuple[list[Conversation], list[Conversation]]:
    if eval_conversations is not None:
        return list(conversations), list(eval_conversations)
    train_idx, held_idx = split_held_out(len(conversations), config)
    return [conversations[i] for i in train_idx], [conversations[i] for i in held_idx]


def _train(
    config: SFTConfig,
    conversations: Sequence[Conversation],
    recorder: RunRecorder,
    eval_conversations: Sequence[Conversation] | None,
    *,
    resume: bool,
    ctx: DistContext,
) -> SFTResult:
    # ---- setup ----
    if ctx.is_main:
        log.info("SFT config: %s", json.dumps(config.to_dict()))
    out = Path(config.output_dir)
    newest = latest_checkpoint(out)
    if newest is not None and not resume:
        raise TrainingError(f"{out} already holds checkpoints ({newest.name}); pass resume=True")
    _seed_everything(config.seed)
    tokenizer = sft_tokenizer(config, ctx)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    train, held_out = _split(conversations, eval_conversations, config)
    if not train:
        raise TrainingError("no training conversations")
    eval_samples = render_conversations(
        tokenizer, held_out[ctx.rank :: ctx.world_size], max_length=config.max_length
    )
    total_steps = steps_per_epoch(len(train), config.batch_size) * config.epochs
    stop = min(total_steps, config.max_steps or total_steps)
    model = sft_model(config, tokenizer, ctx)
    optimizer = make_optimizer(model, config)
    schedule = LRSchedule(config.warmup_steps, total_steps, config.min_lr_ratio, config.lr_schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = _autocast(config, ctx, model)
    data_hash = conversations_hash(conversations)
    state = TrainState(extra={"data_hash": data_hash, "n_train": len(train)})

    # ---- resume ----
    saved_at: int | None = None
    if newest is not None:
        meta = read_checkpoint_meta(newest)
        _check_resumable(meta.config, config, data_hash, meta.state.extra)
        state = load_checkpoint(
            newest, model=model, optimizer=optimizer, scheduler=scheduler, ctx=ctx
        ).state
        saved_at = state.step
        if ctx.is_main:
            log.info("resumed from %s at step %d of %d", newest, state.step, total_steps)

    def evaluate() -> None:
        if not held_out:
            return
        loss = evaluate_loss(model, eval_samples, config, pad_token_id=pad_id, autocast=autocast)
        state.eval_history.append([state.step, loss])
        recorder.log(state.step, {"eval_loss": loss})

    def checkpoint(*, final: bool) -> None:
        nonlocal saved_at
        save_checkpoint(
            out,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            config=config.to_dict(),
            tokenizer=tokenizer,
            ctx=ctx,
            keep=config.keep_checkpoints,
            full_model=final,
        )
        saved_at = state.step

    if state.step == 0 and not state.eval_history:
        evaluate()
    last_loss: float | None = None
    while state.step < stop:
        # ---- batch ----
        began = time.perf_counter()
        positions = step_sample_indices(state.step, len(train), config)
        mine = [train[positions[i]] for i in range(ctx.rank, len(positions), ctx.world_size)]

        # ---- render + pack ----
        samples = render_conversations(tokenizer, mine, max_length=config.max_length)
        batches = make_micro_batches(
            samples,
            packing=config.packing,
            max_length=config.max_length,
            micro_batch_rows=config.micro_batch_rows,
            pad_token_id=pad_id,
        )
        slots = sum(b["input_ids"].numel() for b in batches)
        real = sum(int(b["token_mask"].sum()) for b in batches)
        rows = sum(b["input_ids"].shape[0] for b in batches)
        batches += _idle_batches(len(batches), pad_id, packing=config.packing, device=ctx.device)

        # ---- count ----
        counts = torch.tensor(
            [
                count_trained_tokens(batches),
                real,
                slots,
                rows,
                len(samples),
                sum(s.truncated for s in samples),
            ],
            dtype=torch.float64,
            device=ctx.device,
        )
        all_reduce_sum(counts)
        n_trained, n_real, n_slots, n_rows, n_samples, n_truncated = (
            int(c) for c in counts.tolist()
        )

        # ---- forward / backward ----
        loss_sum = accumulate_gradients(
            model,
            batches,
            packing=config.packing,
            num_trained_tokens=n_trained,
            loss_scale=float(ctx.world_size),
            autocast=autocast,
        )

        # ---- optimizer ----
        lr = float(optimizer.param_groups[0]["lr"])
        grad_norm = clip_gradients(model, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        # ---- metrics ----
        total_loss = all_reduce_sum(torch.tensor(loss_sum, dtype=torch.float64, device=ctx.device))
        last_loss = float(total_loss) / max(n_trained, 1)
        state.step += 1
        state.consumed_samples += n_samples
        state.consumed_packs += n_rows
        state.trained_tokens += n_trained
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - began
        recorder.log(
            state.step,
            {
                "loss": last_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "trained_tokens": n_trained,
                "tokens": n_real,
                "tokens_per_s": n_real / seconds,
                "token_utilization": n_real / max(n_slots, 1),
                "samples": n_samples,
                "truncated": n_truncated,
                "epoch": state.consumed_samples / len(train),
            },
        )

        # ---- eval ----
        if config.eval_every and state.step % config.eval_every == 0 and state.step < stop:
            evaluate()

        # ---- checkpoint ----
        if (
            config.checkpoint_every
            and state.step % config.checkpoint_every == 0
            and state.step < stop
        ):
            checkpoint(final=False)

    # ---- end ----
    if not state.eval_history or state.eval_history[-1][0] != state.step:
        evaluate()
    if saved_at != state.step:
        checkpoint(final=True)
    newest = latest_checkpoint(out)
    history = [(int(s), float(v)) for s, v in state.eval_history]
    return SFTResult(
        steps=state.step,
        final_train_loss=last_loss,
        first_eval_loss=history[0][1] if history else None,
        last_eval_loss=history[-1][1] if history else None,
        checkpoint_dir=newest,
        model_dir=None if newest is None else newest / "model",
        eval_history=history,
    )
