"""Losses and advantages of the three-stage recipe (DESIGN §7), as plain tensor functions.

Stage 1 (SFT) uses `masked_token_ce`; stage 2 (GRPO domain teachers) uses `grpo_advantages`,
`tool_teacher_advantages`, `grpo_policy_loss` and the `token_log_probs` / `token_entropy`
helpers; stage 3 (on-policy distillation) uses the Salient Vocabulary Alignment (SVA) loss in
two forms that agree in value and gradients:

- `sva_loss_from_logits`: the reference, from full student and teacher logits [B, T, V];
- `sva_loss_from_topk`: from the student's hidden states, the output embedding and the teacher's
  top-k (`teacher_topk_from_hidden`), never building a [tokens x V] tensor for either model.

Numerics: every loss is computed in float32, or float64 when an input is float64 (so the tests
can compare gradients tightly); bf16/fp16 inputs are upcast after gathering, never before.

Distributed use (data parallelism, gradient accumulation). Both SVA losses average per sample,
then per domain, then over domains, so the normaliser is global to the step. Count first:
`count_D = sva_domain_counts(mask, domain_ids, D)` summed over the step's micro-batches and
all-reduced (SUM) over ranks, with domain ids fixed integers in [0, D). Pass it as
`domain_counts_D=count_D` to either loss: each micro-batch then returns its exact share of the
global loss (the shares sum to it, and so do their gradients). Sum the shares over micro-batches;
DDP/FSDP average gradients over ranks, so multiply the loss by the world size before backward.
The same holds one level down: `sva_domain_stats` gives per-domain sums of sample means and
`domain_normalized_mean(sum_D, count_D)` the loss, with all-reduced `count_D` (and, for
logging the global value, an all-reduced detached `sum_D`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ---- SVA: per position, and domain-normalized averaging ----


def _truncated_reverse_kl(logq_s_N_k: Tensor, logq_t_N_k: Tensor) -> Tensor:
    return (logq_s_N_k.exp() * (logq_s_N_k - logq_t_N_k)).sum(-1)


def sva_per_position_loss(
    student_logits_B_T_V: Tensor, teacher_logits_B_T_V: Tensor, k: int
) -> Tensor:
    """Truncated reverse KL on the teacher's top-k at every position, shape [B, T].

    S = top-k ids of the teacher's logits z_t; p̄_s(u) = exp(z_s(u)) / Σ_{v∈S} exp(z_s(v)),
    p̄_t likewise; loss = Σ_{u∈S} p̄_s(u) (log p̄_s(u) - log p̄_t(u)). The teacher is detached.
    """
    ids_B_T_k = teacher_logits_B_T_V.detach().topk(k, dim=-1).indices
    dtype = _compute_dtype(student_logits_B_T_V)
    s_B_T_k = student_logits_B_T_V.gather(-1, ids_B_T_k).to(dtype)
    t_B_T_k = teacher_logits_B_T_V.detach().gather(-1, ids_B_T_k).to(dtype)
    return _truncated_reverse_kl(s_B_T_k.log_softmax(-1), t_B_T_k.log_softmax(-1))


def sva_domain_counts(mask_B_T: Tensor, domain_ids_B: Tensor, num_domains: int) -> Tensor:
    """count_D[d] = number of samples of domain d with at least one response position (int64)."""
    has_resp_B = (mask_B_T != 0).any(-1).long()
    return has_resp_B.new_zeros(num_domains).index_add_(0, domain_ids_B.long(), has_resp_B)


def sva_domain_stats(
    loss_B_T: Tensor, mask_B_T: Tensor, domain_ids_B: Tensor, num_domains: int
) -> tuple[Tensor, Tensor]:
    """Per-domain sums of per-sample means, and per-domain sample counts.

    m_b = Σ_t mask[b,t] loss[b,t] / Σ_t mask[b,t] (samples with no response position skipped);
    sum_D[d] = Σ_{b: domain b = d} m_b, count_D = `sva_domain_counts`. Domain ids in
    [0, num_domains). Under data parallelism all-reduce count_D (see the module docstring).
    """
    keep_B_T = mask_B_T != 0
    n_resp_B = keep_B_T.sum(-1).clamp_min(1)
    mean_B = torch.where(keep_B_T, loss_B_T, 0).sum(-1) / n_resp_B
    sum_D = mean_B.new_zeros(num_domains).index_add(0, domain_ids_B.long(), mean_B)
    return sum_D, sva_domain_counts(mask_B_T, domain_ids_B, num_domains)


def domain_normalized_mean(sum_D: Tensor, count_D: Tensor) -> Tensor:
    """(1/|D⁺|) Σ_{d∈D⁺} sum_D[d] / count_D[d], D⁺ = {d : count_D[d] > 0}; 0 if D⁺ is empty.

    Branch-free, so an empty batch still returns a zero connected to the graph.
    """
    n_present = (count_D > 0).sum().clamp_min(1)
    return (sum_D / count_D.clamp_min(1)).sum() / n_present


def _domain_index(domain_ids_B: Tensor, domain_counts_D: Tensor | None) -> tuple[Tensor, int]:
    if domain_counts_D is not None:
        return domain_ids_B.long(), domain_counts_D.numel()
    uniq, index_B = torch.unique(domain_ids_B, return_inverse=True)
    return index_B, uniq.numel()


def sva_loss_from_logits(
    student_logits_B_T_V: Tensor,
    teacher_logits_B_T_V: Tensor,
    mask_B_T: Tensor,
    domain_ids_B: Tensor,
    k: int,
    *,
    domain_counts_D: Tensor | None = None,
) -> Tensor:
    """Reference SVA loss: domain-normalized mean of `sva_per_position_loss`.

    loss = (1/|D⁺|) Σ_{d∈D⁺} (1/n_d) Σ_{b∈d, R_b≠∅} (1/|R_b|) Σ_{t∈R_b} L_{b,t}, where R_b is
    the set of response positions (mask ≠ 0) of sample b, n_d the number of samples of domain d
    with R_b ≠ ∅, and D⁺ the domains with n_d > 0; 0 (with a grad path) when no R_b is
    non-empty. Domain ids are arbitrary integers, or indices into `domain_counts_D` when that
    is given (global counts, see the module docstring).
    """
    index_B, num_domains = _domain_index(domain_ids_B, domain_counts_D)
    loss_B_T = sva_per_position_loss(student_logits_B_T_V, teacher_logits_B_T_V, k)
    sum_D, count_D = sva_domain_stats(loss_B_T, mask_B_T, index_B, num_domains)
    return domain_normalized_mean(sum_D, count_D if domain_counts_D is None else domain_counts_D)


def sva_token_weights(
    mask_B_T: Tensor, domain_ids_B: Tensor, count_D: Tensor, *, dtype: Any = torch.float32
) -> Tensor:
    """w[b,t] = mask[b,t] / (|R_b| · count_D[domain b] · |D⁺|), so Σ w L is the loss above.

    Domain ids index `count_D` (from `sva_domain_counts`, local or all-reduced).
    """
    keep_B_T = mask_B_T != 0
    n_present = (count_D > 0).sum()
    denom_B = keep_B_T.sum(-1) * count_D[domain_ids_B.long()] * n_present
    return keep_B_T.to(dtype) / denom_B.clamp_min(1)[:, None].to(dtype)


# ---- SVA from hidden states and the teacher's top-k, chunked over tokens ----


def _chunk_log_probs(
    hidden_c_H: Tensor, weight_V_H: Tensor, ids_c_k: Tensor, teacher_c_k: Tensor, dtype: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rows_c_k_H = weight_V_H[ids_c_k].to(dtype)
    h_c_H = hidden_c_H.to(dtype)
    s_c_k = torch.einsum("ckh,ch->ck", rows_c_k_H, h_c_H)
    return rows_c_k_H, h_c_H, s_c_k.log_softmax(-1), teacher_c_k.to(dtype).log_softmax(-1)


class _SVATopK(torch.autograd.Function):
    """Σ_n w_n · L_n over flattened response tokens, L_n the truncated reverse KL on S_n.

    Student logits on S_n: s_n(u) = W[u] · h_n. Gradient: ∂L/∂s(u) = p̄_s(u) (δ(u) - L) with
    δ = log p̄_s - log p̄_t; ∂/∂h_n = Σ_u g(u) W[u], ∂/∂W[u] += g(u) h_n. Per chunk of tokens the
    forward gathers W rows [chunk, k, H]; the backward recomputes them instead of saving them.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden_N_H: Tensor,
        weight_V_H: Tensor,
        ids_N_k: Tensor,
        teacher_N_k: Tensor,
        token_weight_N: Tensor,
        chunk_size: int,
    ) -> Tensor:
        dtype = token_weight_N.dtype
        total = hidden_N_H.new_zeros((), dtype=dtype)
        for lo in range(0, hidden_N_H.shape[0], chunk_size):
            sl = slice(lo, lo + chunk_size)
            *_, logq_s, logq_t = _chunk_log_probs(
                hidden_N_H[sl], weight_V_H, ids_N_k[sl], teacher_N_k[sl], dtype
            )
            total += (token_weight_N[sl] * _truncated_reverse_kl(logq_s, logq_t)).sum()
        ctx.save_for_backward(hidden_N_H, weight_V_H, ids_N_k, teacher_N_k, token_weight_N)
        ctx.chunk_size = chunk_size
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden_N_H, weight_V_H, ids_N_k, teacher_N_k, token_weight_N = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        dtype = token_weight_N.dtype
        grad_h = hidden_N_H.new_zeros(hidden_N_H.shape, dtype=dtype) if need_h else None
        grad_w = weight_V_H.new_zeros(weight_V_H.shape, dtype=dtype) if need_w else None
        for lo in range(0, hidden_N_H.shape[0], ctx.chunk_size):
            sl = slice(lo, lo + ctx.chunk_size)
            rows_c_k_H, h_c_H, logq_s, logq_t = _chunk_log_probs(
                hidden_N_H[sl], weight_V_H, ids_N_k[sl], teacher_N_k[sl], dtype
            )
            q_c_k = logq_s.exp()
            delta_c_k = logq_s - logq_t
            loss_c = (q_c_k * delta_c_k).sum(-1, keepdim=True)
            scale_c = (grad_out.to(dtype) * token_weight_N[sl])[:, None]
            g_c_k = scale_c * q_c_k * (delta_c_k - loss_c)
            if grad_h is not None:
                grad_h[sl] = torch.einsum("ck,ckh->ch", g_c_k, rows_c_k_H)
            del rows_c_k_H  # before the [chunk, k, H] outer product below
            if grad_w is not None:
                outer = g_c_k[:, :, None] * h_c_H[:, None, :]
                grad_w.index_add_(0, ids_N_k[sl].reshape(-1), outer.reshape(-1, h_c_H.shape[-1]))
        grad_h = None if grad_h is None else grad_h.to(hidden_N_H.dtype)
        grad_w = None if grad_w is None else grad_w.to(weight_V_H.dtype)
        return grad_h, grad_w, None, None, None, None


def sva_loss_from_topk(
    student_hidden_B_T_H: Tensor,
    lm_head_weight_V_H: Tensor,
    teacher_topk_ids_B_T_k: Tensor,
    teacher_topk_logits_B_T_k: Tensor,
    mask_B_T: Tensor,
    domain_ids_B: Tensor,
    *,
    chunk_size: int = 1024,
    domain_counts_D: Tensor | None = None,
) -> Tensor:
    """SVA loss of `sva_loss_from_logits(h @ W.T, teacher_logits, ...)`, without [tokens x V].

    Given S = teacher_topk_ids and z_t(S) = teacher_topk_logits (logits, or log-probs: a shift
    per position cancels), loss = Σ_{b,t} w[b,t] L_{b,t} with w = `sva_token_weights` and
    L_{b,t} = Σ_{u∈S} p̄_s(u)(log p̄_s(u) - log p̄_t(u)), p̄_s = softmax_S(W[S] h_{b,t}). Equal
    value and gradients (w.r.t. hidden and W) to the reference. Only masked positions are
    computed, `chunk_size` tokens at a time; peak extra memory ≈ chunk_size·k·H plus the [V, H]
    gradient of W (in the compute dtype, float32 for bf16 weights). The head must be a plain
    bias-free linear map (apply any final norm or logit scaling to the hidden states first).
    """
    keep_B_T = mask_B_T != 0
    index_B, num_domains = _domain_index(domain_ids_B, domain_counts_D)
    count_D = domain_counts_D
    if count_D is None:
        count_D = sva_domain_counts(mask_B_T, index_B, num_domains)
    dtype = _compute_dtype(student_hidden_B_T_H, lm_head_weight_V_H)
    weight_N = sva_token_weights(mask_B_T, index_B, count_D, dtype=dtype)[keep_B_T]
    loss: Tensor = _SVATopK.apply(  # type: ignore[no-untyped-call]
        student_hidden_B_T_H[keep_B_T],
        lm_head_weight_V_H,
        teacher_topk_ids_B_T_k[keep_B_T],
        teacher_topk_logits_B_T_k[keep_B_T].detach(),
        weight_N,
        chunk_size,
    )
    return loss


@torch.no_grad()
def teacher_topk_from_hidden(
    teacher_hidden_B_T_H: Tensor,
    lm_head_weight_V_H: Tensor,
    k: int,
    *,
    vocab_chunk: int = 32768,
    token_chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Top-k of z = h @ W.T per position: (ids [B, T, k], logits [B, T, k]), largest first.

    Scans `token_chunk` tokens x `vocab_chunk` vocabulary entries at a time, keeping a running
    top-k, so at most token_chunk·vocab_chunk logits exist at once. Logits in float32 (float64
    for float64 inputs). Needs k ≤ V.
    """
    *lead, hidden_size = teacher_hidden_B_T_H.shape
    h_N_H = teacher_hidden_B_T_H.reshape(-1, hidden_size)
    dtype = _compute_dtype(h_N_H, lm_head_weight_V_H)
    vocab = lm_head_weight_V_H.shape[0]
    ids_N_k = torch.empty(h_N_H.shape[0], k, dtype=torch.long, device=h_N_H.device)
    vals_N_k = torch.empty(h_N_H.shape[0], k, dtype=dtype, device=h_N_H.device)
    for lo in range(0, h_N_H.shape[0], token_chunk):
        h_c_H = h_N_H[lo : lo + token_chunk].to(dtype)
        best_vals = h_c_H.new_full((h_c_H.shape[0], 0), float("-inf"))
        best_ids = torch.empty_like(best_vals, dtype=torch.long)
        for v0 in range(0, vocab, vocab_chunk):
            logits_c_v = h_c_H @ lm_head_weight_V_H[v0 : v0 + vocab_chunk].to(dtype).T
            vals, idx = logits_c_v.topk(min(k, logits_c_v.shape[-1]), dim=-1)
            merged_vals = torch.cat([best_vals, vals], dim=-1)
            merged_ids = torch.cat([best_ids, idx + v0], dim=-1)
            best_vals, pick = merged_vals.topk(min(k, merged_vals.shape[-1]), dim=-1)
            best_ids = merged_ids.gather(-1, pick)
        ids_N_k[lo : lo + token_chunk], vals_N_k[lo : lo + token_chunk] = best_ids, best_vals
    return ids_N_k.reshape(*lead, k), vals_N_k.reshape(*lead, k)


# ---- GRPO: advantages ----


def _group_normalize(values_N: Tensor, group_N: Tensor, include_N: Tensor) -> Tensor:
    """(v - mean_g) / (std_g + 1e-6) over the included members of each group, else 0."""
    dtype = _compute_dtype(values_N)
    _, index_N = torch.unique(group_N, return_inverse=True)
    num_groups = int(index_N.max()) + 1 if index_N.numel() else 0
    inc_N = include_N.to(dtype)
    v_N = values_N.to(dtype) * inc_N
    count_G = inc_N.new_zeros(num_groups).index_add_(0, index_N, inc_N)
    mean_G = v_N.new_zeros(num_groups).index_add_(0, index_N, v_N) / count_G.clamp_min(1)
    dev_N = (v_N - mean_G[index_N]) * inc_N
    var_G = dev_N.new_zeros(num_groups).index_add_(0, index_N, dev_N**2)
    std_G = (var_G / (count_G - 1).clamp_min(1)).sqrt()
    adv_N = dev_N / (std_G[index_N] + 1e-6)
    return torch.where(count_G[index_N] >= 2, adv_N, 0.0)


def grpo_advantages(rewards_N: Tensor, group_ids_N: Tensor) -> Tensor:
    """A_i = (r_i - mean_g r) / (std_g r + 1e-6), std unbiased (n - 1); 0 in a group of one.

    Group ids are arbitrary integers; samples of a group need not be contiguous. float32 out.
    """
    return _group_normalize(rewards_N, group_ids_N, torch.ones_like(rewards_N, dtype=torch.bool))


def tool_teacher_advantages(
    r_out_N: Tensor, r_proc_N: Tensor, group_ids_N: Tensor, *, lam_neg: float = 0.5
) -> Tensor:
    """A_i = A_i^out + λ_neg · 1[r_i^out = 0] · A_i^proc.

    A^out = `grpo_advantages(r_out)` over the whole group; A^proc is the same normalization of
    r_proc over the group's negatives (r_out = 0) only: 0 for positives, and 0 for the whole
    group when it has fewer than two negatives.
    """
    negative_N = r_out_N == 0
    a_out_N = grpo_advantages(r_out_N, group_ids_N)
    a_proc_N = _group_normalize(r_proc_N, group_ids_N, negative_N)
    return a_out_N + lam_neg * negative_N * a_proc_N


# ---- GRPO: policy loss ----


def _masked_mean(x_N_T: Tensor, keep_N_T: Tensor, num_tokens: Tensor | float | None) -> Tensor:
    total = torch.where(keep_N_T, x_N_T, 0).sum()
    denom = keep_N_T.sum().clamp_min(1) if num_tokens is None else num_tokens
    return total / denom


def grpo_policy_loss(
    logp_N_T: Tensor,
    old_logp_N_T: Tensor,
    advantages_N: Tensor,
    mask_N_T: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.001,
    entropy: Tensor | None = None,
    ent_coef: float = 0.0,
    num_tokens: Tensor | float | None = None,
) -> Tensor:
    """Clipped GRPO surrogate with asymmetric clipping, k3 KL and entropy bonus, token-averaged.

    Per token, rho = exp(logp - old_logp) and δ = ref_logp - logp:
    L = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + kl_coef (e^δ - δ - 1) - ent_coef H,
    the KL term only when `ref_logp` [N, T] is given, the entropy term only when `entropy`
    [N, T] is. Averaged over all masked tokens of the batch (token-level normalization, as in
    DAPO, so long responses are not down-weighted); `num_tokens` replaces the local count by a
    global one (micro-batches, ranks): then the returned values sum to the global loss.
    """
    keep_N_T = mask_N_T != 0
    dtype = _compute_dtype(logp_N_T)
    logp = logp_N_T.to(dtype)
    ratio = (logp - old_logp_N_T.to(dtype)).exp()
    adv = advantages_N.to(dtype)[:, None]
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    if ref_logp is not None:
        delta = ref_logp.to(dtype) - logp
        loss = loss + kl_coef * (delta.exp() - delta - 1)
    if entropy is not None:
        loss = loss - ent_coef * entropy.to(dtype)
    return _masked_mean(loss, keep_N_T, num_tokens)


@dataclass(frozen=True)
class PolicyStats:
    """Diagnostics of `grpo_policy_loss`, each a mean over the masked tokens."""

    clip_frac_low: float  # A < 0 and rho < 1 - eps_low: clipped, no gradient
    clip_frac_high: float  # A > 0 and rho > 1 + eps_high: clipped, no gradient
    mean_ratio: float  # mean rho
    mean_kl: float | None  # mean of e^δ - δ - 1, None without ref_logp


@torch.no_grad()
def grpo_policy_stats(
    logp_N_T: Tensor,
    old_logp_N_T: Tensor,
    advantages_N: Tensor,
    mask_N_T: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    ref_logp: Tensor | None = None,
) -> PolicyStats:
    """Clip fractions, mean ratio and mean KL of the tokens `grpo_policy_loss` averages over."""
    keep_N_T = mask_N_T != 0
    logp = logp_N_T.to(_compute_dtype(logp_N_T))
    ratio = (logp - old_logp_N_T.to(logp.dtype)).exp()
    adv = advantages_N.to(logp.dtype)[:, None].expand_as(ratio)
    low = ((adv < 0) & (ratio < 1 - eps_low)).to(logp.dtype)
    high = ((adv > 0) & (ratio > 1 + eps_high)).to(logp.dtype)
    mean_kl = None
    if ref_logp is not None:
        delta = ref_logp.to(logp.dtype) - logp
        mean_kl = float(_masked_mean(delta.exp() - delta - 1, keep_N_T, None))
    return PolicyStats(
        clip_frac_low=float(_masked_mean(low, keep_N_T, None)),
        clip_frac_high=float(_masked_mean(high, keep_N_T, None)),
        mean_ratio=float(_masked_mean(ratio, keep_N_T, None)),
        mean_kl=mean_kl,
    )


# ---- token-level helpers ----


def token_log_probs(logits_N_T_V: Tensor, targets_N_T: Tensor) -> Tensor:
    """log softmax(logits)[target] per position: z[y] - logsumexp(z), float32, shape [N, T]."""
    z = logits_N_T_V.to(_compute_dtype(logits_N_T_V))
    return z.gather(-1, targets_N_T.long()[..., None]).squeeze(-1) - z.logsumexp(-1)


def token_entropy(logits_N_T_V: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """H = -Σ_v p(v) log p(v), p = softmax(logits), float32, shape [N, T].

    With `chunk_size`, `chunk_size` rows of N at a time: bounds the float32 temporaries when run
    without grad (diagnostics); under autograd each chunk's graph still keeps its own copy.
    """
    rows = logits_N_T_V.shape[0]
    step = rows if chunk_size is None else chunk_size
    parts = []
    for lo in range(0, max(rows, 1), max(step, 1)):
        logp = logits_N_T_V[lo : lo + step].to(_compute_dtype(logits_N_T_V)).log_softmax(-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(parts, dim=0)


def masked_token_ce(
    logits_B_T_V: Tensor, labels_B_T: Tensor, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """(Σ_{t: y_t ≠ ignore} -log softmax(z_t)[y_t], number of such tokens), float32 / int64.

    Labels are aligned with the logits: logits[:, t] predicts labels[:, t], so the caller shifts
    (e.g. labels = input_ids[:, 1:] for logits[:, :-1]). Return the sum and the count so the
    trainer can divide by the count of trained tokens over all micro-batches and ranks.
    """
    z = logits_B_T_V.reshape(-1, logits_B_T_V.shape[-1]).to(_compute_dtype(logits_B_T_V))
    y = labels_B_T.reshape(-1).long()
    loss_sum = F.cross_entropy(z, y, ignore_index=ignore_index, reduction="sum")
    return loss_sum, (y != ignore_index).sum()
