"""Packing: layout invariants, and the key property — packed logits equal per-sample logits."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from transformers import Qwen3ForCausalLM

from kap.training.chat import IGNORE_INDEX, RenderedSample
from kap.training.errors import TrainingError
from kap.training.modeling import TinyModelSpec, build_tiny_model
from kap.training.packing import (
    Pack,
    collate_packed,
    collate_padded,
    forward_packed,
    pack_samples,
    token_utilization,
)

VOCAB = 211
PAD = 0
LENGTHS = [7, 13, 5, 20, 3, 11, 1, 16]
MAX_LENGTH = 32


def make_samples(lengths: list[int], seed: int = 0) -> list[RenderedSample]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        trained = torch.rand(n, generator=g) < 0.6
        labels = [
            t if keep else IGNORE_INDEX for t, keep in zip(ids, trained.tolist(), strict=True)
        ]
        samples.append(RenderedSample(ids, labels))
    return samples


@pytest.fixture(scope="module")
def model() -> Qwen3ForCausalLM:
    return build_tiny_model(TinyModelSpec(vocab_size=VOCAB), seed=0).eval()


def segments(pack: Pack) -> list[tuple[int, int]]:
    cu = pack.cu_seqlens.tolist()
    return list(itertools.pairwise(cu))


# ---- layout ----


def test_packs_keep_every_sample_whole_and_once() -> None:
    samples = make_samples(LENGTHS)
    packs = pack_samples(samples, MAX_LENGTH)
    placed = [i for p in packs for i in p.sample_indices]
    assert sorted(placed) == list(range(len(samples)))
    for pack in packs:
        assert len(pack) <= MAX_LENGTH
        assert pack.cu_seqlens.dtype == torch.int32
        assert pack.cu_seqlens[0] == 0 and pack.cu_seqlens[-1] == len(pack)
        for (start, end), i in zip(segments(pack), pack.sample_indices, strict=True):
            assert pack.input_ids[start:end].tolist() == samples[i].input_ids
            assert pack.position_ids[start:end].tolist() == list(range(end - start))
            assert pack.labels[start] == IGNORE_INDEX  # no loss across the boundary
            assert pack.labels[start + 1 : end].tolist() == samples[i].labels[1:]
            assert pack.seq_lens == tuple(b - a for a, b in segments(pack))
    all_tokens = Counter(t for s in samples for t in s.input_ids)
    assert Counter(t for p in packs for t in p.input_ids.tolist()) == all_tokens


def test_first_fit_decreasing_is_deterministic() -> None:
    samples = make_samples(LENGTHS)
    packs = pack_samples(samples, MAX_LENGTH)
    # 20, 16, 13, 11, 7, 5, 3, 1 into 32: [20, 11, 1], [16, 13, 3], [7, 5]; input order inside.
    assert [p.sample_indices for p in packs] == [(3, 5, 6), (1, 4, 7), (0, 2)]
    again = pack_samples(samples, MAX_LENGTH)
    assert [p.sample_indices for p in again] == [p.sample_indices for p in packs]


def test_too_long_or_empty_samples_are_refused() -> None:
    with pytest.raises(TrainingError, match=r"sample 1 has 40 tokens"):
        pack_samples(make_samples([3, 40]), MAX_LENGTH)
    with pytest.raises(TrainingError, match="sample 0 has 0 tokens"):
        pack_samples([RenderedSample([], [])], MAX_LENGTH)


def test_collate_packed_pads_with_restarting_positions() -> None:
    packs = pack_samples(make_samples(LENGTHS), MAX_LENGTH)
    batch = collate_packed(packs, pad_token_id=PAD)
    width = max(len(p) for p in packs)
    assert batch["input_ids"].shape == (3, width)
    last = packs[2]
    pad = width - len(last)
    assert batch["input_ids"][2, len(last) :].tolist() == [PAD] * pad
    assert batch["labels"][2, len(last) :].tolist() == [IGNORE_INDEX] * pad
    assert batch["position_ids"][2, len(last) :].tolist() == list(range(pad))
    assert batch["token_mask"].sum() == sum(LENGTHS)
    # boundaries over the flattened B*L row: samples and padding runs alike
    cu = batch["cu_seq_lens"]
    assert cu.dtype == torch.int32 and cu[-1] == batch["input_ids"].numel()
    assert int(batch["max_seq_len"]) == max(LENGTHS)
    flat_positions = batch["position_ids"].reshape(-1)
    assert flat_positions[cu[:-1].long()].tolist() == [0] * (len(cu) - 1)


def test_collate_padded_is_one_sample_per_row() -> None:
    samples = make_samples([4, 9])
    batch = collate_padded(samples, pad_token_id=PAD)
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"].tolist()[0] == [1] * 4 + [0] * 5
    assert batch["labels"][0, 4:].tolist() == [IGNORE_INDEX] * 5


def test_packing_uses_more_of_the_batch_than_padding() -> None:
    samples = make_samples(LENGTHS)
    packed = collate_packed(pack_samples(samples, MAX_LENGTH), pad_token_id=PAD)
    padded = collate_padded(samples, pad_token_id=PAD)
    assert token_utilization(padded) == pytest.approx(sum(LENGTHS) / (len(LENGTHS) * 20))
    assert token_utilization(packed) > token_utilization(padded)
    trained = sum(sum(label != IGNORE_INDEX for label in s.labels[1:]) for s in samples)
    assert token_utilization(packed, trained_only=True) == pytest.approx(
        trained / packed["input_ids"].numel()
    )
    assert token_utilization([packed, packed]) == token_utilization(packed)


# ---- attention isolation: the key property ----


def per_sample_logits(model: Qwen3ForCausalLM, samples: list[RenderedSample]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(torch.tensor([s.input_ids]), use_cache=False).logits[0] for s in samples]


def max_error(logits_B_L_V: torch.Tensor, packs: list[Pack], alone: list[torch.Tensor]) -> float:
    worst = 0.0
    for row, pack in enumerate(packs):
        for (start, end), i in zip(segments(pack), pack.sample_indices, strict=True):
            diff = (logits_B_L_V[row, start:end] - alone[i]).abs().max()
            worst = max(worst, float(diff))
    return worst


@pytest.mark.parametrize("flatten", [False, True], ids=["rows", "one-flat-row"])
def test_packed_logits_equal_unpacked_logits(model: Qwen3ForCausalLM, *, flatten: bool) -> None:
    samples = make_samples(LENGTHS, seed=1)
    packs = pack_samples(samples, MAX_LENGTH)
    batch = collate_packed(packs, pad_token_id=PAD)
    with torch.no_grad():
        logits = forward_packed(model, batch, flatten=flatten).logits
    assert logits.shape == (*batch["input_ids"].shape, VOCAB)
    assert max_error(logits, packs, per_sample_logits(model, samples)) < 1e-5


def test_packed_logits_equal_unpacked_logits_on_eager_attention() -> None:
    eager = build_tiny_model(TinyModelSpec(vocab_size=VOCAB), seed=2, attn_implementation="eager")
    samples = make_samples(LENGTHS, seed=2)
    packs = pack_samples(samples, MAX_LENGTH)
    with torch.no_grad():
        logits = forward_packed(eager.eval(), collate_packed(packs, pad_token_id=PAD)).logits
    assert max_error(logits, packs, per_sample_logits(eager, samples)) < 1e-5


def test_negative_controls_leak_across_samples(model: Qwen3ForCausalLM) -> None:
    samples = make_samples(LENGTHS, seed=1)
    packs = pack_samples(samples, MAX_LENGTH)
    batch = collate_packed(packs, pad_token_id=PAD)
    alone = per_sample_logits(model, samples)
    ids, positions = batch["input_ids"], batch["position_ids"]
    with torch.no_grad():
        leaks = {
            "positions not restarting": model(input_ids=ids, use_cache=False).logits,
            "an attention_mask passed": model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=batch["token_mask"].long(),
                use_cache=False,
            ).logits,
            "use_cache left on (config default)": model(
                input_ids=ids, position_ids=positions
            ).logits,
        }
    for name, logits in leaks.items():
        assert max_error(logits, packs, alone) > 1e-2, name


def test_packed_loss_is_the_token_mean_over_samples(model: Qwen3ForCausalLM) -> None:
    samples = make_samples(LENGTHS, seed=3)
    packs = pack_samples(samples, MAX_LENGTH)
    batch = collate_packed(packs, pad_token_id=PAD)
    total, count = 0.0, 0
    with torch.no_grad():
        for sample, logits_L_V in zip(samples, per_sample_logits(model, samples), strict=True):
            targets = torch.tensor(sample.labels[1:], dtype=torch.long)
            losses = torch.nn.functional.cross_entropy(
                logits_L_V[:-1], targets, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(losses)
            count += int((targets != IGNORE_INDEX).sum())
        for flatten in (False, True):
            loss = forward_packed(model, batch, with_loss=True, flatten=flatten).loss
            assert float(loss) == pytest.approx(total / count, rel=1e-5)
