"""Distillation core: masks, domain routing, the loss against the full-logits reference."""

from __future__ import annotations

import pytest
import torch

from kap.training.distill import (
    Rollout,
    collate_rollouts,
    distill_loss,
    reverse_kl_to_teachers,
    score_with_teachers,
)
from kap.training.errors import TrainingError
from kap.training.modeling import TinyModelSpec, build_tiny_model
from kap.training.objectives import sva_loss_from_logits

VOCAB, K = 97, 8
SPEC = TinyModelSpec(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, head_dim=16, intermediate_size=64)  # fmt: skip


def rollouts(seed: int = 0) -> list[Rollout]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (n_prompt, n_resp) in enumerate([(5, 6), (3, 9), (7, 2), (4, 4)]):
        ids = torch.randint(1, VOCAB, (n_prompt + n_resp,), generator=g).tolist()
        out.append(Rollout(ids, [False] * n_prompt + [True] * n_resp, "math" if i % 2 else "web"))
    return out


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    student = build_tiny_model(SPEC, seed=0)
    teachers = {"web": build_tiny_model(SPEC, seed=1), "math": build_tiny_model(SPEC, seed=2)}
    return student, teachers


def test_trained_positions_predict_generated_tokens() -> None:
    batch = collate_rollouts(rollouts(), ["web", "math"], pad_token_id=0)
    first = batch.trained_B_T[0].tolist()
    # 5 prompt tokens, 6 generated: positions 4..9 predict tokens 5..10; nothing past the end.
    assert first == [False] * 4 + [True] * 6 + [False] * (batch.input_ids_B_T.shape[1] - 10)
    assert batch.domain_ids_B.tolist() == [0, 1, 0, 1]


def test_a_domain_without_a_teacher_is_refused() -> None:
    with pytest.raises(TrainingError, match="no teacher for domain"):
        collate_rollouts(rollouts(), ["web"], pad_token_id=0)


def test_each_row_is_scored_by_its_own_domains_teacher(models) -> None:  # type: ignore[no-untyped-def]
    _, teachers = models
    batch = collate_rollouts(rollouts(), ["web", "math"], pad_token_id=0)
    scores = score_with_teachers(teachers, batch, K)
    for row, name in enumerate(["web", "math", "web", "math"]):
        logits = teachers[name](input_ids=batch.input_ids_B_T[row : row + 1]).logits[0]
        top = logits.topk(K, dim=-1)
        assert torch.allclose(scores.topk_logits_B_T_k[row], top.values, atol=1e-5)
        mass = logits.softmax(-1).gather(-1, top.indices).sum(-1)
        assert torch.allclose(scores.topk_mass_B_T[row], mass, atol=1e-5)


def test_loss_equals_the_full_logits_reference(models) -> None:  # type: ignore[no-untyped-def]
    student, teachers = models
    batch = collate_rollouts(rollouts(), ["web", "math"], pad_token_id=0)
    loss, stats = distill_loss(student, teachers, batch, k=K, chunk_size=5)
    # Reference: the student's and each row's routed teacher's full logits.
    s_logits = student(input_ids=batch.input_ids_B_T).logits
    t_logits = torch.stack([
        teachers[batch.domains[d]](input_ids=batch.input_ids_B_T[r : r + 1]).logits[0]
        for r, d in enumerate(batch.domain_ids_B.tolist())
    ]).detach()  # fmt: skip
    ref = sva_loss_from_logits(s_logits, t_logits, batch.trained_B_T, batch.domain_ids_B, K)
    assert torch.allclose(loss, ref, atol=1e-5)
    assert set(stats.kl_per_domain) == {"web", "math"}
    # Two domains, equal weight: the loss is the mean of the per-domain values.
    assert stats.loss == pytest.approx(sum(stats.kl_per_domain.values()) / 2, abs=1e-5)
    assert stats.trained_tokens == int(batch.trained_B_T.sum())


def pattern_rollouts(n: int, seed: int) -> list[Rollout]:
    """Sequences with a rule per domain (web: +1 over 1..40, math: +3 over 41..90)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        domain, low, span, stride = ("web", 1, 40, 1) if i % 2 == 0 else ("math", 41, 50, 3)
        start = int(torch.randint(0, span, (1,), generator=g))
        ids = [low + (start + stride * t) % span for t in range(12)]
        out.append(Rollout(ids, [False] * 3 + [True] * 9, domain))
    return out


def fit_teacher(seed: int, domain: str) -> torch.nn.Module:
    """A teacher that has learned its domain's rule (next-token CE on pattern sequences)."""
    teacher = build_tiny_model(SPEC, seed=seed)
    data = [r for r in pattern_rollouts(64, seed=100 + seed) if r.domain == domain]
    ids = torch.tensor([r.token_ids for r in data])
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
    for _ in range(60):
        loss = teacher(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return teacher.eval()


def test_steps_on_the_loss_lower_the_reverse_kl_on_held_out_sequences() -> None:
    student = build_tiny_model(SPEC, seed=0)
    teachers = {"web": fit_teacher(1, "web"), "math": fit_teacher(2, "math")}
    batch = collate_rollouts(pattern_rollouts(16, seed=0), ["web", "math"], pad_token_id=0)
    held_out = collate_rollouts(pattern_rollouts(16, seed=1), ["web", "math"], pad_token_id=0)
    before = reverse_kl_to_teachers(student, teachers, held_out)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for _ in range(30):
        loss, _ = distill_loss(student, teachers, batch, k=K)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = reverse_kl_to_teachers(student, teachers, held_out)
    for name in ("web", "math"):
        assert after[name] < 0.5 * before[name], (before, after)
