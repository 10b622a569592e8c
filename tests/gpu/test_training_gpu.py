"""Training on a CUDA device: run with the device tool when a GPU is lent (`pytest -m gpu`).

Without CUDA these tests are deselected by tests/conftest.py (never skipped silently: the
session reports how many). Each one has a CPU twin in tests/unit/training that CI runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kap.training.demo_data import demo_conversations
from kap.training.objectives import (
    sva_loss_from_logits,
    sva_loss_from_topk,
    teacher_topk_from_hidden,
)
from kap.training.runs import MemoryRecorder
from kap.training.sft import SFTConfig, train_sft
from kap.training.tokenizer import corpus_texts, train_tokenizer

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_sva_from_topk_equals_the_logits_reference_on_cuda_at_qwen_vocabulary() -> None:
    torch.manual_seed(0)
    B, T, H, V, k = 2, 257, 256, 151_936, 64
    hidden = torch.randn(B, T, H, device=CUDA, requires_grad=True)
    weight = (torch.randn(V, H, device=CUDA) / H**0.5).requires_grad_()
    teacher_hidden, teacher_weight = (
        torch.randn(B, T, H, device=CUDA),
        torch.randn(V, H, device=CUDA) / H**0.5,
    )
    mask = torch.rand(B, T, device=CUDA) > 0.3
    domains = torch.tensor([0, 1], device=CUDA)
    ids, logits = teacher_topk_from_hidden(teacher_hidden, teacher_weight, k)
    fast = sva_loss_from_topk(hidden, weight, ids, logits, mask, domains)
    g_fast = torch.autograd.grad(fast, [hidden, weight])
    ref = sva_loss_from_logits(
        hidden @ weight.T, teacher_hidden @ teacher_weight.T, mask, domains, k
    )
    g_ref = torch.autograd.grad(ref, [hidden, weight])
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_sft_trains_on_cuda_in_bfloat16_and_writes_its_model(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer"
    train_tokenizer(corpus_texts(limit=300), vocab_size=1024).save_pretrained(tokenizer)
    config = SFTConfig(tokenizer=str(tokenizer), batch_size=8, max_length=2048, max_steps=6,
                       lr=3e-3, warmup_steps=1, eval_fraction=0.2, eval_every=0,
                       checkpoint_every=0, output_dir=str(tmp_path / "sft"), device="cuda",
                       mixed_precision=True)  # fmt: skip
    recorder = MemoryRecorder()
    result = train_sft(config, demo_conversations(60, seed=0), recorder)
    assert result.model_dir is not None and (result.model_dir / "config.json").is_file()
    assert result.last_eval_loss is not None and result.first_eval_loss is not None
    assert result.last_eval_loss < result.first_eval_loss
    assert all(torch.isfinite(torch.tensor(v)) for _, v in recorder.series("loss"))
