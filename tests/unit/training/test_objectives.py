"""kap.training.objectives against hand-computed tensors, and the top-k SVA path against the
reference (value and gradients, chunking exercised, gradcheck)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kap.training.objectives import (
    _SVATopK,
    domain_normalized_mean,
    grpo_advantages,
    grpo_policy_loss,
    grpo_policy_stats,
    masked_token_ce,
    sva_domain_counts,
    sva_domain_stats,
    sva_loss_from_logits,
    sva_loss_from_topk,
    teacher_topk_from_hidden,
    token_entropy,
    token_log_probs,
    tool_teacher_advantages,
)

E = math.exp


def rev_kl(ps: list[float], pt: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(ps, pt, strict=True))


# Case 1: teacher [3, 1, 2, 0] -> S = {0, 2}, teacher on S [3, 2], student on S [0, 1].
CASE1_T, CASE1_S = [3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, -1.0]
L1 = rev_kl([1 / (1 + E(1)), E(1) / (1 + E(1))], [E(3) / (E(3) + E(2)), E(2) / (E(3) + E(2))])
# Case 2: teacher [0, 4, -1, 1] -> S = {1, 3}, teacher on S [4, 1], student on S [0, 2].
CASE2_T, CASE2_S = [0.0, 4.0, -1.0, 1.0], [2.0, 0.0, 3.0, 2.0]
L2 = rev_kl([1 / (1 + E(2)), E(2) / (1 + E(2))], [E(4) / (E(4) + E(1)), E(1) / (E(4) + E(1))])
IDENT = [0.5, -1.0, 2.0, 0.0]  # student = teacher: loss 0
GARBAGE_T, GARBAGE_S = [9.0, -3.0, 0.0, 4.0], [-7.0, 8.0, 1.0, 0.0]


def batch(rows: list[list[tuple[list[float], list[float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """rows of (student, teacher) positions -> (student_logits, teacher_logits) [B, T, 4]."""
    student = torch.tensor([[s for s, _ in row] for row in rows], dtype=torch.float64)
    teacher = torch.tensor([[t for _, t in row] for row in rows], dtype=torch.float64)
    return student, teacher


C1, C2, ID, G = (CASE1_S, CASE1_T), (CASE2_S, CASE2_T), (IDENT, IDENT), (GARBAGE_S, GARBAGE_T)


# ---- SVA, reference path ----


def test_sva_single_position_hand_computed() -> None:
    student, teacher = batch([[C1]])
    loss = sva_loss_from_logits(student, teacher, torch.ones(1, 1), torch.tensor([0]), k=2)
    assert loss.item() == pytest.approx(L1, rel=1e-12)


def test_sva_domain_normalization_hand_computed() -> None:
    # Domain 7 has three samples, domain 3 one: the domains weigh equally.
    student, teacher = batch([[C1, ID], [ID, C1], [C1, C1], [C2, ID]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0]])
    domains = torch.tensor([7, 7, 7, 3])
    loss = sva_loss_from_logits(student, teacher, mask, domains, k=2)
    expected = ((L1 / 2 + 0 + L1) / 3 + L2) / 2
    token_mean = (L1 + 0 + L1 + L2) / 4
    assert abs(expected - token_mean) > 0.05
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_sva_samples_without_response_positions_change_nothing() -> None:
    student, teacher = batch([[C1, ID], [C2, C1]])
    mask, domains = torch.tensor([[1, 1], [1, 0]]), torch.tensor([0, 1])
    base = sva_loss_from_logits(student, teacher, mask, domains, k=2)
    student2, teacher2 = batch([[C1, ID], [G, G], [C2, C1], [G, C1]])
    mask2 = torch.tensor([[1, 1], [0, 0], [1, 0], [0, 0]])
    domains2 = torch.tensor([0, 0, 1, 5])  # an empty sample in a present and in a new domain
    loss = sva_loss_from_logits(student2, teacher2, mask2, domains2, k=2)
    assert loss.item() == pytest.approx(base.item(), rel=1e-12)
    assert base.item() == pytest.approx((L1 / 2 + L2) / 2, rel=1e-12)


def test_sva_no_response_position_is_zero_with_grad() -> None:
    student, teacher = batch([[C1, C2]])
    student.requires_grad_()
    loss = sva_loss_from_logits(student, teacher, torch.zeros(1, 2), torch.tensor([0]), k=2)
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))
    hidden = torch.randn(1, 2, 3, requires_grad=True)
    weight = torch.randn(4, 3, requires_grad=True)
    ids, vals = torch.tensor([[[0, 1], [2, 3]]]), torch.zeros(1, 2, 2)
    loss = sva_loss_from_topk(hidden, weight, ids, vals, torch.zeros(1, 2), torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and weight.grad is not None and not weight.grad.any()


def test_sva_domain_stats_and_mean_hand_computed() -> None:
    loss = torch.tensor([[1.0, 3.0, 100.0], [4.0, 100.0, 100.0], [6.0, 8.0, 10.0], [5.0] * 3])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    sum_d, count_d = sva_domain_stats(loss, mask, torch.tensor([0, 0, 2, 1]), num_domains=4)
    assert sum_d.tolist() == [2.0 + 4.0, 0.0, 8.0, 0.0]
    assert count_d.tolist() == [2, 0, 1, 0]
    assert domain_normalized_mean(sum_d, count_d).item() == pytest.approx((3.0 + 8.0) / 2)


def test_sva_k_equal_vocab_is_full_reverse_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    logp_s, logp_t = student.log_softmax(-1), teacher.log_softmax(-1)
    full_kl = (logp_s.exp() * (logp_s - logp_t)).sum(-1).mean()
    loss = sva_loss_from_logits(student, teacher, torch.ones(2, 3), torch.tensor([4, 4]), k=6)
    assert loss.item() == pytest.approx(full_kl.item(), rel=1e-12)


def test_sva_identical_student_and_teacher_is_zero() -> None:
    logits = torch.randn(3, 5, 17, generator=torch.Generator().manual_seed(1))
    loss = sva_loss_from_logits(
        logits, logits.clone(), torch.ones(3, 5), torch.tensor([0, 1, 1]), 4
    )
    assert abs(loss.item()) < 1e-6


def test_sva_bf16_inputs_computed_in_float32() -> None:
    student, teacher = batch([[C1, C2]])
    mask, domains = torch.ones(1, 2), torch.tensor([0])
    loss = sva_loss_from_logits(student.bfloat16(), teacher.bfloat16(), mask, domains, k=2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((L1 + L2) / 2, rel=1e-6)


# ---- SVA, top-k path ----


def random_case(seed: int, b: int = 4, t: int = 7, h: int = 13, v: int = 41, k: int = 5):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) / math.sqrt(h)
    teacher = 2 * torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=gen) < 0.7).long()
    mask[-1] = 0  # one sample with no response position
    mask[0, 0] = 1
    domains = torch.tensor([2, 0, 2, 5][:b])
    return hidden, weight, teacher, mask, domains, k


def reference_and_topk(seed: int, chunk_size: int) -> tuple[list[torch.Tensor], ...]:
    hidden, weight, teacher, mask, domains, k = random_case(seed)
    out = []
    for path in ("logits", "topk"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if path == "logits":
            loss = sva_loss_from_logits(h @ w.T, teacher, mask, domains, k)
        else:
            vals, ids = teacher.topk(k, dim=-1)
            loss = sva_loss_from_topk(h, w, ids, vals, mask, domains, chunk_size=chunk_size)
        loss.backward()
        out.append([loss.detach(), h.grad, w.grad])
    return tuple(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_path_equals_logits_path_value_and_gradients(seed: int) -> None:
    ref, fused = reference_and_topk(seed, chunk_size=4)
    for a, b in zip(ref, fused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert ref[0].item() > 0


def test_topk_function_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    n, h, v, k = 5, 3, 7, 3
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.rand(n, v, generator=gen).argsort(-1)[:, :k]
    teacher = torch.randn(n, k, generator=gen, dtype=torch.float64)
    token_weight = torch.rand(n, generator=gen, dtype=torch.float64)

    def fn(hid: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _SVATopK.apply(hid, w, ids, teacher, token_weight, 2)

    assert torch.autograd.gradcheck(fn, (hidden, weight))


@pytest.mark.parametrize("use_topk", [False, True])
def test_sva_shares_with_global_counts_sum_to_the_batch_loss(*, use_topk: bool) -> None:
    hidden, weight, teacher, mask, domains, k = random_case(4)
    vals, ids = teacher.topk(k, dim=-1)

    def loss(rows: slice, counts: torch.Tensor | None) -> torch.Tensor:
        if use_topk:
            return sva_loss_from_topk(
                hidden[rows],
                weight,
                ids[rows],
                vals[rows],
                mask[rows],
                domains[rows],
                chunk_size=3,
                domain_counts_D=counts,
            )
        logits = hidden[rows] @ weight.T
        return sva_loss_from_logits(
            logits, teacher[rows], mask[rows], domains[rows], k, domain_counts_D=counts
        )

    halves = [slice(0, 2), slice(2, 4)]
    counts = sum(sva_domain_counts(mask[r], domains[r], num_domains=6) for r in halves)
    assert isinstance(counts, torch.Tensor)
    shares = sum(loss(r, counts) for r in halves)
    torch.testing.assert_close(shares, loss(slice(0, 4), None), rtol=1e-12, atol=0)


@pytest.mark.parametrize("vocab_chunk", [4, 7, 50, 64])
def test_teacher_topk_from_hidden_equals_full_topk(vocab_chunk: int) -> None:
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 5, 8, generator=gen)
    weight = torch.randn(50, 8, generator=gen)
    ids, vals = teacher_topk_from_hidden(hidden, weight, 6, vocab_chunk=vocab_chunk, token_chunk=3)
    full = hidden @ weight.T
    want = full.topk(6, dim=-1)
    assert ids.shape == vals.shape == (2, 5, 6)
    torch.testing.assert_close(vals, want.values)
    torch.testing.assert_close(full.gather(-1, ids), vals)
    assert [set(r) for r in ids.reshape(10, 6).tolist()] == [
        set(r) for r in want.indices.reshape(10, 6).tolist()
    ]


# ---- GRPO advantages ----


def test_grpo_advantages_hand_computed_non_contiguous_groups() -> None:
    rewards = torch.tensor([1.0, 0.5, 0.0, 3.0, 1.0, 2.0, 1.0, 1.0])
    groups = torch.tensor([10, -2, 10, 7, 10, 4, 10, 4])
    adv = grpo_advantages(rewards, groups)
    s10, s4 = 0.5 + 1e-6, math.sqrt(0.5) + 1e-6  # group 10: mean 0.75; group 4: mean 1.5
    expected = [0.25 / s10, 0.0, -0.75 / s10, 0.0, 0.25 / s10, 0.5 / s4, 0.25 / s10, -0.5 / s4]
    assert adv.tolist() == pytest.approx(expected, rel=1e-5)


def test_grpo_advantages_equal_rewards_are_zero() -> None:
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]))
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_tool_teacher_advantages_hand_computed() -> None:
    r_out = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    r_proc = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.3, 0.1, 0.5])
    groups = torch.tensor([3, 3, 3, 3, 8, 8, 8])
    adv = tool_teacher_advantages(r_out, r_proc, groups, lam_neg=0.5)
    # Group 3: A_out over [1, 0, 0, 0] (mean 0.25, std 0.5); A_proc over the negatives' r_proc
    # [0.2, 0.6, 0.4] (mean 0.4, std 0.2).
    so, sp = 0.5 + 1e-6, 0.2 + 1e-6
    group3 = [0.75 / so, -0.25 / so - 0.5 * 0.2 / sp, -0.25 / so + 0.5 * 0.2 / sp, -0.25 / so]
    # Group 8: a single negative, so A_proc = 0; A_out over [1, 1, 0] (mean 2/3, std sqrt(1/3)).
    s8 = math.sqrt(1 / 3) + 1e-6
    group8 = [(1 / 3) / s8, (1 / 3) / s8, (-2 / 3) / s8]
    assert adv.tolist() == pytest.approx(group3 + group8, rel=1e-5, abs=1e-6)


# ---- GRPO policy loss ----


def policy_case() -> tuple[torch.Tensor, ...]:
    ratios = torch.tensor([[1.5, 1.1, 3.0], [0.5, 1.2, 0.9]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.7, -2.2]], dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_()
    return logp, old, torch.tensor([1.0, -2.0]), torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_grpo_policy_loss_clipping_hand_computed() -> None:
    logp, old, adv, mask = policy_case()
    loss = grpo_policy_loss(logp, old, adv, mask)
    # A = +1: rho 1.5 clipped to 1.28, rho 1.1 kept; A = -2: rho 0.5 clipped to 0.8, 1.2, 0.9 kept.
    per_token = [-1.28, -1.1, 0.8 * 2, 1.2 * 2, 0.9 * 2]
    assert loss.item() == pytest.approx(sum(per_token) / 5, rel=1e-12)
    loss.backward()
    assert logp.grad is not None
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[1, 0].item() == 0.0  # clipped
    assert logp.grad[0, 2].item() == 0.0  # masked out
    assert logp.grad[0, 1].item() == pytest.approx(-1.1 / 5)


def test_grpo_policy_loss_kl_and_entropy_terms() -> None:
    logp, old, adv, mask = policy_case()
    base = grpo_policy_loss(logp, old, adv, mask).item()
    delta = [[0.3, -0.2, 5.0], [0.0, 0.1, -0.4]]
    ref = logp.detach() + torch.tensor(delta, dtype=torch.float64)
    entropy = torch.tensor([[1.0, 2.0, 50.0], [0.5, 0.25, 3.0]], dtype=torch.float64)
    kl = [math.exp(d) - d - 1 for d in (0.3, -0.2, 0.0, 0.1, -0.4)]
    with_kl = grpo_policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert with_kl.item() == pytest.approx(base + 0.1 * sum(kl) / 5, rel=1e-12)
    with_ent = grpo_policy_loss(logp, old, adv, mask, entropy=entropy, ent_coef=0.01)
    assert with_ent.item() == pytest.approx(base - 0.01 * (1 + 2 + 0.5 + 0.25 + 3) / 5, rel=1e-12)


def test_grpo_policy_loss_global_token_count_and_stats() -> None:
    logp, old, adv, mask = policy_case()
    whole = grpo_policy_loss(logp, old, adv, mask)
    rows = [slice(0, 1), slice(1, 2)]
    parts = [grpo_policy_loss(logp[r], old[r], adv[r], mask[r], num_tokens=5) for r in rows]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-12)
    stats = grpo_policy_stats(logp, old, adv, mask, ref_logp=logp.detach())
    assert stats.clip_frac_high == pytest.approx(1 / 5)
    assert stats.clip_frac_low == pytest.approx(1 / 5)
    assert stats.mean_ratio == pytest.approx((1.5 + 1.1 + 0.5 + 1.2 + 0.9) / 5)
    assert stats.mean_kl == pytest.approx(0.0)


# ---- token helpers and SFT cross-entropy ----


def test_token_log_probs_and_entropy_hand_computed() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]])
    logp = token_log_probs(logits, torch.tensor([[1, 0]]))
    assert logp.tolist()[0] == pytest.approx([math.log(0.75), math.log(0.5)])
    ent = token_entropy(logits).tolist()[0]
    assert ent == pytest.approx([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2)])
    chunked = token_entropy(torch.randn(5, 3, 7), chunk_size=2)
    assert chunked.shape == (5, 3)


def test_masked_token_ce_hand_computed_and_against_torch() -> None:
    logits = torch.tensor([[[0.0, math.log(2.0)], [5.0, 5.0]]])
    loss_sum, n = masked_token_ce(logits, torch.tensor([[1, -100]]))
    assert loss_sum.item() == pytest.approx(-math.log(2 / 3)) and n.item() == 1
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[0, :2], labels[1, 4] = -100, -100
    loss_sum, n = masked_token_ce(logits, labels)
    want = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss_sum, want)
    assert n.item() == 7
