"""Sample packing without attention across samples, the padded baseline, and token utilization.

Packing: first-fit-decreasing bin packing (`pack_samples`). Samples are taken longest first (ties
by input order) and each goes into the first pack with room; within a pack they keep input order.
Deterministic for a given input. A sample longer than `max_length` is an error, never split: render
with `render_conversation(max_length=...)`, which truncates and reports it.

Each sample's position ids restart at 0, and its first label is forced to -100 (it has no
in-sample prefix to be predicted from), so the shifted next-token loss never crosses a boundary.

How attention stays inside a sample (transformers 5.19, found in its source):
- sdpa / eager / flex on CPU or GPU: when `attention_mask is None` and there is no KV cache,
  `masking_utils.create_causal_mask` calls `find_packed_sequence_indices(position_ids)` (a new
  sample starts wherever the position does not grow by 1) and ANDs the causal mask with a
  same-sample mask: block-diagonal causal attention, no mask to build here. Two traps: an
  `attention_mask` turns the detection off, and so does `use_cache=True` (Qwen3's config default:
  the model then creates a DynamicCache before the mask). `forward_packed` passes neither.
- flash_attention_2: `_flash_attention_forward` infers varlen boundaries from position ids only
  when batch size is 1. `forward_packed` therefore flattens a micro-batch of packs into one row
  and passes `cu_seq_lens_q/k` and `max_length_q/k` explicitly (flash_attn_varlen_func).
Padding at the end of a row gets its own restarting positions, so it is one more "sample" that
attends only to itself; its labels are -100.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kap.training.chat import IGNORE_INDEX, RenderedSample
from kap.training.errors import TrainingError

# Keys of a collated batch that are bookkeeping, not `model.forward` arguments.
META_KEYS = frozenset({"cu_seq_lens", "max_seq_len", "token_mask"})


@dataclass(frozen=True)
class Pack:
    """Several samples laid end to end in one row (length = sum of seq_lens, unpadded)."""

    input_ids: Tensor  # [L] int64
    labels: Tensor  # [L] int64, -100 where no loss
    position_ids: Tensor  # [L] int64, 0.. restarting at every sample
    cu_seqlens: Tensor  # [n_samples + 1] int32, sample boundaries (flash-attn varlen layout)
    seq_lens: tuple[int, ...]  # length of each sample, in row order
    sample_indices: tuple[int, ...]  # position of each sample in the input sequence

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def _first_fit_decreasing(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(max_length - lengths[i])
    return [sorted(b) for b in bins]


def _make_pack(samples: Sequence[RenderedSample], indices: Sequence[int]) -> Pack:
    lens = [len(samples[i]) for i in indices]
    labels = [list(samples[i].labels) for i in indices]
    for row in labels:
        row[0] = IGNORE_INDEX  # never predicted from the previous sample's last token
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens), 0)
    return Pack(
        input_ids=torch.tensor([t for i in indices for t in samples[i].input_ids]),
        labels=torch.tensor([t for row in labels for t in row]),
        position_ids=torch.cat([torch.arange(n) for n in lens]),
        cu_seqlens=cu,
        seq_lens=tuple(lens),
        sample_indices=tuple(indices),
    )


def pack_samples(samples: Sequence[RenderedSample], max_length: int) -> list[Pack]:
    """Samples packed into rows of at most `max_length` tokens, first-fit-decreasing.

    Raises TrainingError for an empty sample or one longer than `max_length`.
    """
    lengths = [len(s) for s in samples]
    for i, n in enumerate(lengths):
        if n == 0 or n > max_length:
            raise TrainingError(
                f"sample {i} has {n} tokens; packing needs 1..{max_length} "
                "(truncate with render_conversation(max_length=...))"
            )
    return [_make_pack(samples, b) for b in _first_fit_decreasing(lengths, max_length)]


# ---- collation ----


def collate_packed(packs: Sequence[Pack], *, pad_token_id: int) -> dict[str, Tensor]:
    """A micro-batch of packs: rows padded to the longest pack.

    Returns input_ids, labels, position_ids [B, L] (padding: pad id, -100, positions restarting
    at 0), token_mask [B, L] (real tokens), cu_seq_lens (int32, boundaries of every sample and
    padding run in the flattened B*L row) and max_seq_len (0-d). Feed it to `forward_packed`.
    """
    width = max(len(p) for p in packs)
    input_ids = torch.full((len(packs), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(packs), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(packs), width), dtype=torch.long)
    token_mask = torch.zeros((len(packs), width), dtype=torch.bool)
    segments: list[int] = []
    for row, pack in enumerate(packs):
        n = len(pack)
        input_ids[row, :n], labels[row, :n] = pack.input_ids, pack.labels
        position_ids[row, :n] = pack.position_ids
        position_ids[row, n:] = torch.arange(width - n)
        token_mask[row, :n] = True
        segments.extend(pack.seq_lens)
        if width > n:
            segments.append(width - n)
    cu = torch.zeros(len(segments) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(segments), 0)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "token_mask": token_mask,
        "cu_seq_lens": cu,
        "max_seq_len": torch.tensor(max(segments)),
    }


def collate_padded(samples: Sequence[RenderedSample], *, pad_token_id: int) -> dict[str, Tensor]:
    """The padded baseline: one sample per row, right-padded; input_ids, labels, attention_mask."""
    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "token_mask": attention_mask.bool(),
    }


# ---- forward ----


def _uses_flash_attention(model: torch.nn.Module) -> bool:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in impl


def forward_packed(
    model: torch.nn.Module,
    batch: Mapping[str, Tensor],
    *,
    with_loss: bool = False,
    flatten: bool | None = None,
) -> Any:
    """Run a causal LM on a `collate_packed` batch so that no sample attends to another.

    Returns the model output with logits [B, L, V] (and the mean loss over labels when
    `with_loss`). `flatten` (default: only under flash attention) lays the batch out as one row
    and passes the varlen boundaries; on sdpa it is equivalent, and is how the CPU test covers it.
    """
    flatten = _uses_flash_attention(model) if flatten is None else flatten
    rows, width = batch["input_ids"].shape
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if with_loss:
        inputs["labels"] = batch["labels"]
    kwargs: dict[str, Any] = {}
    if flatten:
        inputs = {k: v.reshape(1, -1) for k, v in inputs.items()}
        cu = batch["cu_seq_lens"].to(device=batch["input_ids"].device, dtype=torch.int32)
        max_len = int(batch["max_seq_len"])
        kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
        kwargs |= {"max_length_q": max_len, "max_length_k": max_len}
    # No attention_mask and no cache: both would switch transformers' packed-sequence detection off.
    out = model(**inputs, use_cache=False, **kwargs)
    if flatten:
        out.logits = out.logits.reshape(rows, width, -1)
    return out


def token_utilization(
    batches: Mapping[str, Tensor] | Iterable[Mapping[str, Tensor]], *, trained_only: bool = False
) -> float:
    """Real (or, with `trained_only`, loss-bearing) tokens / all slots, over one or more batches."""
    if isinstance(batches, Mapping):
        batches = [batches]
    used = slots = 0
    for batch in batches:
        counted = batch["labels"] != IGNORE_INDEX if trained_only else batch["token_mask"]
        used += int(counted.sum())
        slots += batch["input_ids"].numel()
    return used / slots if slots else 0.0
