"""Stage 2: GRPO domain teachers on multi-turn tool episodes (DESIGN §7).

    kap train teacher --config configs/train/teacher-tiny.yaml                      # CPU, toy env
    kap train teacher --config FILE --set run.model=CKPT --set run.engine=vllm      # 1 GPU
    torchrun --nproc-per-node 8 -m kap.training.cli teacher --config FILE \
        --set run.model=CKPT --set run.engine=vllm                                  # 8 GPUs

Each step (one rollout round): take `tasks_per_step` tasks (a share from the hard-task set, the
rest fresh) → G episodes per task with the rollout engine → shaped rewards from the
environment's verifier → dynamic sampling drops groups with no learning signal and rolls out
more tasks (up to `max_sampling_attempts` passes) → advantages → `updates_per_step` AdamW steps
on the clipped surrogate with KL and entropy terms → `engine.sync_weights(model)`.

Choices, and deviations from the paper (which leaves them open or says otherwise):
- old log-probs are recomputed by the trainer's model before the round's first update, not taken
  from the engine: vLLM's bf16 kernels differ from the trainer's numerics, and the importance
  ratio should measure only how far the updates moved the policy. The engine's behaviour
  log-probs are kept for the `logp_mismatch` metric (mean |behaviour - old| per token).
  Log-probs and entropy are those of logits / temperature, the distribution sampled from (top-p
  truncation is not modelled, as in verl/TRL).
- normalization: DAPO token level — the loss is the sum over every trained token of the
  mini-batch divided by their count (all micro-batches, all ranks), so long responses are not
  down-weighted. Only tokens the policy sampled are trained; prompts and tool outputs are masked.
- with `updates_per_step` = 1 the update is on-policy (ratio 1, the clip inactive); with more,
  the round's episodes are split into that many mini-batches and later ones are off-policy.
- dynamic sampling ("correctness", DAPO): a group whose binary correctness (r_out) is uniform —
  all right or all wrong — is dropped; in tool-teacher mode an all-wrong group whose r_proc
  varies is kept (its process advantage is the signal). "reward" drops groups whose shaped
  rewards are all equal (DESIGN's wording); "off" keeps all.
- tool teacher: A = A^out + λ_neg·1[r_out = 0]·A^proc where A^out normalizes the *shaped* reward
  over the group (so round, repetition and format terms still count) and A^proc normalizes
  r_proc over the group's negatives (`objectives.tool_teacher_advantages`).
- hard-task set (64): after every round, each task rolled out whose group correctness was not
  uniform is a candidate scored by its mean correctness; the set keeps the `hard_set_size`
  lowest scores (a re-rolled task gets its new score; a task whose group came back uniform
  leaves the set). Each round draws `hard_fraction` of its tasks from the set.
- the KL term (k3, to a frozen copy of the initial model) is computed only when kl_coef > 0.
- multi-GPU: each rank rolls out its own tasks (its own seed) and owns whole groups, so
  advantages are local; token counts and metrics are all-reduced; the caller wraps the model
  (DDP/FSDP2, which average gradients: the loss is multiplied by the world size).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

from kap.training.chat import CHAT_TEMPLATE
from kap.training.config import ConfigError, config_from_yaml
from kap.training.distributed import (
    all_reduce_max,
    all_reduce_sum,
    set_gradient_sync,
)
from kap.training.environments import (
    ArithmeticEnv,
    EnvFactory,
    RewardConfig,
    Task,
    make_arithmetic_tasks,
)
from kap.training.errors import TrainingError
from kap.training.modeling import TinyModelSpec, load_model
from kap.training.objectives import (
    grpo_advantages,
    grpo_policy_loss,
    grpo_policy_stats,
    token_entropy,
    token_log_probs,
    tool_teacher_advantages,
)
from kap.training.rollout import (
    Episode,
    RolloutEngine,
    TransformersEngine,
    run_episodes,
    summarize,
)
from kap.training.tokenizer import (
    tool_call_snippets,
    train_tokenizer,
)

log = logging.getLogger(__name__)
MetricsCallback = Callable[[int, Mapping[str, float]], None]
ADVANTAGES = ("grpo", "tool_teacher")
DYNAMIC_SAMPLING = ("correctness", "reward", "off")


class GRPOConfigError(ConfigError):
    """A GRPO config file or value is invalid; the message names the field."""


@dataclass(frozen=True)
class GRPOConfig:
    """Every knob of a GRPO run; logged whole at start."""

    # ---- rollouts ----
    steps: int = 200  # rollout rounds; each ends with `updates_per_step` optimizer steps
    tasks_per_step: int = 16  # groups (distinct tasks) trained on per round, per rank
    group_size: int = 8  # G: episodes per task; advantages are normalized within a group
    max_rounds: int = (
        8  # hard cap on assistant turns per episode (K, the free turns, is reward.free_rounds)
    )
    max_new_tokens: int = 1024  # tokens per assistant turn
    temperature: float = 1.0  # sampling temperature (the trainer's log-probs use logits / T too)
    top_p: float = 1.0  # nucleus sampling; 1.0 samples the full distribution
    # ---- advantages and dynamic sampling ----
    advantage: str = "grpo"  # "grpo" (group-normalized reward) or "tool_teacher"
    lam_neg: float = 0.5  # λ_neg: weight of the process advantage on negatives (tool teacher)
    dynamic_sampling: str = "correctness"  # drop uniform groups: "correctness", "reward" or "off"
    max_sampling_attempts: int = 3  # rollout passes per round to fill tasks_per_step kept groups
    hard_set_size: int = 64  # hard tasks kept for replay across rounds (0 disables)
    hard_fraction: float = 0.25  # share of each round's tasks drawn from the hard set
    # ---- objective ----
    eps_low: float = 0.2  # ratio clip below: 1 - eps_low
    eps_high: float = 0.28  # ratio clip above: 1 + eps_high (clip-higher, DAPO)
    kl_coef: float = 0.001  # k3 KL to the frozen initial model; 0 skips the reference model
    ent_coef: float = 0.0001  # entropy bonus
    # ---- optimization ----
    lr: float = 1e-6  # AdamW learning rate (constant)
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    updates_per_step: int = 1  # optimizer steps per round (mini-batches of its episodes)
    micro_batch_size: int = 8  # episodes per forward/backward (gradient accumulation)
    reward: RewardConfig = field(default_factory=RewardConfig)  # shaping terms and K
    seed: int = 0  # task order, sampling, mini-batch order

    def __post_init__(self) -> None:
        checks = {
            "advantage": self.advantage in ADVANTAGES,
            "dynamic_sampling": self.dynamic_sampling in DYNAMIC_SAMPLING,
            "group_size": self.group_size >= 2,
            "steps": self.steps >= 0,
            "tasks_per_step": self.tasks_per_step >= 1,
            "max_rounds": self.max_rounds >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "max_sampling_attempts": self.max_sampling_attempts >= 1,
            "hard_set_size": self.hard_set_size >= 0,
            "hard_fraction": 0.0 <= self.hard_fraction <= 1.0,
            "eps_low": 0.0 <= self.eps_low < 1.0,
            "eps_high": self.eps_high >= 0.0,
            "temperature": self.temperature > 0.0,
            "top_p": 0.0 < self.top_p <= 1.0,
            "lr": self.lr > 0.0,
            "updates_per_step": self.updates_per_step >= 1,
            "micro_batch_size": self.micro_batch_size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise GRPOConfigError(
                f"invalid GRPO config: {values} (advantage in {ADVANTAGES}, "
                f"dynamic_sampling in {DYNAMIC_SAMPLING}, group_size >= 2, counts >= 1)"
            )

    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = "grpo") -> GRPOConfig:
        """The `grpo:` section of a YAML file (or the whole file when it has no such section)."""
        return config_from_yaml(cls, path, section=section, error=GRPOConfigError)


# ---- task sampling and the hard-task set ----


class HardTaskSet:
    """The `capacity` tasks with the lowest group correctness whose groups were not uniform."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.scores: dict[str, tuple[float, Task]] = {}

    def __len__(self) -> int:
        return len(self.scores)

    def update(self, task: Task, correct_G: Sequence[float]) -> None:
        uniform = len(set(correct_G)) <= 1
        if uniform or self.capacity == 0:
            self.scores.pop(task.id, None)
            return
        self.scores[task.id] = (sum(correct_G) / len(correct_G), task)
        if len(self.scores) > self.capacity:
            ranked = sorted(self.scores.items(), key=lambda kv: (kv[1][0], kv[0]))
            self.scores = dict(ranked[: self.capacity])

    def tasks(self) -> list[Task]:
        return [task for _, task in self.scores.values()]


class TaskSampler:
    """Fresh tasks in shuffled passes over the pool, mixed with draws from the hard set."""

    def __init__(self, tasks: Sequence[Task], rng: random.Random) -> None:
        if not tasks:
            raise TrainingError("GRPO needs at least one task")
        self.pool = list(tasks)
        self.rng = rng
        self.queue: list[Task] = []

    def fresh(self, n: int, exclude: set[str]) -> list[Task]:
        out: list[Task] = []
        refills = 0
        while len(out) < n:
            if not self.queue:
                refills += 1
                self.queue = self.rng.sample(self.pool, len(self.pool))
            task = self.queue.pop()
            if task.id not in exclude or refills > 2:  # a pool smaller than n repeats tasks
                out.append(task)
                exclude.add(task.id)
        return out

    def draw(self, n: int, hard: HardTaskSet, hard_fraction: float) -> list[Task]:
        hard_tasks = hard.tasks()
        k = min(len(hard_tasks), round(n * hard_fraction))
        chosen = self.rng.sample(hard_tasks, k)
        return chosen + self.fresh(n - k, {t.id for t in chosen})


# ---- rollouts with dynamic sampling ----


@dataclass
class Group:
    task: Task
    episodes: list[Episode]

    def column(self, name: str) -> list[float]:
        return [float(getattr(e, name)) for e in self.episodes]


def keep_group(group: Group, mode: str, advantage: str) -> bool:
    """Dynamic sampling: whether a group carries a learning signal (see the module docstring)."""
    if mode == "off":
        return True
    if mode == "reward":
        return len(set(group.column("reward"))) > 1
    correct = group.column("correct")
    if len(set(correct)) > 1:
        return True
    all_wrong = not any(correct)
    return advantage == "tool_teacher" and all_wrong and len(set(group.column("r_proc"))) > 1


@dataclass
class RoundRollouts:
    kept: list[Group]
    dropped: int
    attempts: int
    episodes: list[Episode]  # every episode rolled out this round, kept or not


def collect_groups(
    config: GRPOConfig,
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    env_factory: EnvFactory,
    sampler: TaskSampler,
    hard: HardTaskSet,
    *,
    seed: int,
) -> RoundRollouts:
    """Roll out groups until `tasks_per_step` are kept or the attempts run out."""
    kept: list[Group] = []
    dropped, attempts, everything = 0, 0, []
    while len(kept) < config.tasks_per_step and attempts < config.max_sampling_attempts:
        need = config.tasks_per_step - len(kept)
        tasks = sampler.draw(need, hard, config.hard_fraction if attempts == 0 else 0.0)
        repeated = [t for t in tasks for _ in range(config.group_size)]
        episodes = run_episodes(
            engine, [env_factory() for _ in repeated], repeated, tokenizer,
            max_rounds=config.max_rounds, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p,
            seed=seed + 1000 * attempts, reward_config=config.reward,
        )  # fmt: skip
        everything.extend(episodes)
        attempts += 1
        for i, task in enumerate(tasks):
            group = Group(task, episodes[i * config.group_size : (i + 1) * config.group_size])
            hard.update(task, group.column("correct"))
            if keep_group(group, config.dynamic_sampling, config.advantage):
                kept.append(group)
            else:
                dropped += 1
    return RoundRollouts(kept, dropped, attempts, everything)


def group_advantages(groups: Sequence[Group], config: GRPOConfig) -> Tensor:
    """One advantage per episode, groups concatenated in order."""
    ids_N = torch.tensor([g for g, group in enumerate(groups) for _ in group.episodes])
    reward_N = torch.tensor([x for group in groups for x in group.column("reward")])
    adv_N = grpo_advantages(reward_N, ids_N)
    if config.advantage == "tool_teacher":
        correct_N = torch.tensor([x for group in groups for x in group.column("correct")])
        proc_N = torch.tensor([x for group in groups for x in group.column("r_proc")])
        # A^out of the shaped reward plus λ·1[r_out = 0]·A^proc: swap the helper's A^out(r_out)
        teacher_N = tool_teacher_advantages(correct_N, proc_N, ids_N, lam_neg=config.lam_neg)
        adv_N = adv_N + teacher_N - grpo_advantages(correct_N, ids_N)
    return adv_N


# ---- tensors of a micro-batch ----


@dataclass
class MicroBatch:
    input_ids_B_T: Tensor
    attention_B_T: Tensor
    trained_B_T: Tensor  # position t predicts token t+1, which the policy sampled (T-1 wide)
    behaviour_B_T: Tensor  # engine log-prob of token t+1
    advantages_B: Tensor
    old_logp_B_T: Tensor | None = None
    ref_logp_B_T: Tensor | None = None


def collate_ids(
    token_ids: Sequence[Sequence[int]],
    generated: Sequence[Sequence[bool]],
    logprobs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    pad_id: int,
) -> MicroBatch:
    """Right-padded rows; position t is trained when token t+1 was sampled by the policy."""
    width = max(len(ids) for ids in token_ids)
    rows = len(token_ids)
    ids_B_T = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    trained = torch.zeros((rows, width - 1), dtype=torch.bool)
    behaviour = torch.zeros((rows, width - 1))
    for row, (ids, gen, logp) in enumerate(zip(token_ids, generated, logprobs, strict=True)):
        n = len(ids)
        ids_B_T[row, :n] = torch.tensor(ids)
        attention[row, :n] = 1
        trained[row, : n - 1] = torch.tensor(gen[1:], dtype=torch.bool)
        behaviour[row, : n - 1] = torch.tensor(logp[1:])
    return MicroBatch(ids_B_T, attention, trained, behaviour, torch.tensor(list(advantages)))


def collate(episodes: Sequence[Episode], advantages: Sequence[float], pad_id: int) -> MicroBatch:
    return collate_ids(
        [e.token_ids for e in episodes], [e.generated for e in episodes],
        [e.logprobs for e in episodes], advantages, pad_id,
    )  # fmt: skip


def policy_logits(model: nn.Module, batch: MicroBatch, temperature: float) -> Tensor:
    device = next(model.parameters()).device
    out = model(
        input_ids=batch.input_ids_B_T.to(device),
        attention_mask=batch.attention_B_T.to(device),
        use_cache=False,
    )
    return typing.cast(Tensor, out.logits[:, :-1] / temperature)


@torch.no_grad()
def fill_reference_logps(
    model: nn.Module, ref: nn.Module | None, batches: Sequence[MicroBatch], temperature: float
) -> None:
    """old log-probs from the trainer's model as it is now; ref log-probs from the frozen copy."""
    for batch in batches:
        targets = batch.input_ids_B_T[:, 1:]
        logits = policy_logits(model, batch, temperature)
        batch.old_logp_B_T = token_log_probs(logits, targets.to(logits.device)).cpu()
        if ref is not None:
            ref_logits = policy_logits(ref, batch, temperature)
            batch.ref_logp_B_T = token_log_probs(ref_logits, targets.to(logits.device)).cpu()


# ---- the loop ----


@dataclass
class GRPOResult:
    steps: int  # rollout rounds run
    updates: int  # optimizer steps taken
    history: list[dict[str, float]]  # the metrics of every round
    hard_tasks: list[Task]  # the hard-task set at the end


def _idle_batch(pad: int) -> MicroBatch:
    """A micro-batch with no trained token: keeps a rank's collectives in step with the others."""
    zeros = torch.zeros((1, 1))
    batch = collate_ids([[pad, pad]], [[False, False]], [[0.0, 0.0]], [0.0], pad)
    batch.old_logp_B_T, batch.ref_logp_B_T = zeros, zeros
    return batch


def _update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[MicroBatch],
    config: GRPOConfig,
    world: int,
) -> dict[str, float]:
    """One optimizer step over the micro-batches of a mini-batch (token-level normalization)."""
    device = next(model.parameters()).device
    trained = torch.stack([b.trained_B_T.sum() for b in batches]).sum()
    num_tokens = all_reduce_sum(trained.float().to(device))
    sums = dict.fromkeys(("loss", "clip_low", "clip_high", "ratio", "kl", "entropy"), 0.0)
    optimizer.zero_grad(set_to_none=True)
    for i, b in enumerate(batches):
        assert b.old_logp_B_T is not None
        set_gradient_sync(model, enabled=i == len(batches) - 1)
        logits = policy_logits(model, b, config.temperature)
        logp = token_log_probs(logits, b.input_ids_B_T[:, 1:].to(device))
        entropy = token_entropy(logits if config.ent_coef > 0 else logits.detach())
        mask, old = b.trained_B_T.to(device), b.old_logp_B_T.to(device)
        adv = b.advantages_B.to(device)
        ref = None if b.ref_logp_B_T is None else b.ref_logp_B_T.to(device)
        loss = grpo_policy_loss(
            logp, old, adv, mask, eps_low=config.eps_low, eps_high=config.eps_high,
            ref_logp=ref, kl_coef=config.kl_coef, entropy=entropy, ent_coef=config.ent_coef,
            num_tokens=num_tokens.clamp_min(1),
        )  # fmt: skip
        (loss * world).backward()  # type: ignore[no-untyped-call]  # FSDP2/DDP average gradients over ranks: scale back up
        n = float(mask.sum())
        stats = grpo_policy_stats(logp, old, adv, mask, eps_low=config.eps_low,
                                  eps_high=config.eps_high, ref_logp=ref)  # fmt: skip
        sums["loss"] += float(loss.detach())
        sums["clip_low"] += stats.clip_frac_low * n
        sums["clip_high"] += stats.clip_frac_high * n
        sums["ratio"] += stats.mean_ratio * n
        sums["kl"] += (stats.mean_kl or 0.0) * n
        sums["entropy"] += float(entropy.detach()[mask].sum())
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config.grad_clip if config.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    optimizer.step()
    # micro-batch losses are shares of the global loss: their sum over ranks is the loss
    total = all_reduce_sum(torch.tensor(list(sums.values()), device=device)).tolist()
    count = max(float(num_tokens), 1.0)
    out = {k: v / (1.0 if k == "loss" else count) for k, v in zip(sums, total, strict=True)}
    return {**out, "grad_norm": grad_norm, "trained_tokens": float(num_tokens)}


def _mini_batches(
    episodes: list[Episode], adv: list[float], config: GRPOConfig, rng: random.Random, pad: int
) -> list[list[MicroBatch]]:
    """`updates_per_step` mini-batches (shuffled), each padded with idle micro-batches to the
    largest count over ranks, so every rank runs the same forwards (FSDP2 collectives)."""
    order = rng.sample(range(len(episodes)), len(episodes))
    k, mb = config.updates_per_step, config.micro_batch_size
    parts = [order[i::k] for i in range(k)]
    chunks = [[part[j : j + mb] for j in range(0, len(part), mb)] for part in parts]
    minis = [
        [collate([episodes[i] for i in idx], [adv[i] for i in idx], pad) for idx in mini]
        for mini in chunks
    ]
    counts = all_reduce_max(torch.tensor([len(m) for m in minis])).tolist()
    return [
        m + [_idle_batch(pad) for _ in range(c - len(m))]
        for m, c in zip(minis, counts, strict=True)
    ]


def _round_metrics(rollouts: RoundRollouts, hard: HardTaskSet) -> dict[str, float]:
    kept = [e for g in rollouts.kept for e in g.episodes]
    values = dict(summarize(rollouts.episodes))
    values.update(
        groups_kept=float(len(rollouts.kept)),
        groups_dropped=float(rollouts.dropped),
        sampling_attempts=float(rollouts.attempts),
        kept_reward_mean=summarize(kept)["reward_mean"] if kept else 0.0,
        hard_set_size=float(len(hard)),
    )
    return values


def _logp_mismatch(batches: Sequence[MicroBatch]) -> float:
    diff = sum(
        float(((b.behaviour_B_T - b.old_logp_B_T).abs() * b.trained_B_T).sum())
        for b in batches
        if b.old_logp_B_T is not None
    )
    return diff / max(sum(float(b.trained_B_T.sum()) for b in batches), 1.0)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_grpo(
    config: GRPOConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    env_factory: EnvFactory,
    tasks: Sequence[Task],
    *,
    engine: RolloutEngine | None = None,
    metrics: MetricsCallback | None = None,
    ref_model: nn.Module | None = None,
) -> GRPOResult:
    """Train `model` in place with GRPO on episodes of `tasks`, one environment per episode.

    `model`: a causal LM, sharded with FSDP2 under torchrun (gradients averaged over ranks).
    `engine` defaults to a `TransformersEngine` on `model` itself (one process) and gets the
    model's weights after every update round. `ref_model`: the frozen KL reference; by default
    a deep copy of `model` at start (pass a separately sharded copy under FSDP2), none when
    kl_coef = 0. `metrics(step, values)` gets every round's metrics on every rank.
    """
    rank, world = _world()
    log.info("GRPO config: %s", json.dumps(dataclasses.asdict(config)))
    rng = random.Random(config.seed * 1009 + rank)
    if engine is None:
        engine = TransformersEngine(typing.cast(PreTrainedModel, model), tokenizer)
    ref = None
    if config.kl_coef > 0:
        ref = ref_model if ref_model is not None else copy.deepcopy(model)
        ref.eval().requires_grad_(requires_grad=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(config.adam_beta1, config.adam_beta2))  # fmt: skip
    sampler, hard = TaskSampler(tasks, rng), HardTaskSet(config.hard_set_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history: list[dict[str, float]] = []
    updates = 0
    for step in range(config.steps):
        # ---- rollouts, rewards, dynamic sampling ----
        seed = config.seed * 1_000_003 + rank * 7919 + step * 31
        rollouts = collect_groups(config, engine, tokenizer, env_factory, sampler, hard, seed=seed)
        values = _round_metrics(rollouts, hard)
        kept_anywhere = all_reduce_sum(torch.tensor(float(len(rollouts.kept)))).item() > 0
        if kept_anywhere:
            # ---- advantages; old and reference log-probs ----
            episodes = [e for g in rollouts.kept for e in g.episodes]
            adv = group_advantages(rollouts.kept, config).tolist() if episodes else []
            minis = _mini_batches(episodes, adv, config, rng, pad)
            model.train()
            flat = [b for m in minis for b in m]
            fill_reference_logps(model, ref, flat, config.temperature)
            values["logp_mismatch"] = _logp_mismatch(flat)
            # ---- policy updates ----
            stats = [_update(model, optimizer, mini, config, world) for mini in minis]
            updates += len(stats)
            values.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
            # ---- weights to the engine ----
            engine.sync_weights(model)
        history.append(values)
        if metrics is not None:
            metrics(step, values)
        log.info("grpo step %d: %s", step, {k: round(v, 4) for k, v in values.items()})
    return GRPOResult(config.steps, updates, history, hard.tasks())


# ---- evaluation ----


def evaluate_policy(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    env_factory: EnvFactory,
    tasks: Sequence[Task],
    *,
    max_rounds: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    reward_config: RewardConfig | None = None,
) -> dict[str, float]:
    """Mean reward, correctness, rounds, response length over one episode per task."""
    episodes = run_episodes(
        engine, [env_factory() for _ in tasks], list(tasks), tokenizer, max_rounds=max_rounds,
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
        reward_config=reward_config,
    )  # fmt: skip
    return dict(summarize(episodes))


# ---- the toy teacher: the command line's run on ArithmeticEnv ----


@dataclass(frozen=True)
class ToyRun:
    """The `toy:` section of a teacher config: tasks, tokenizer and model of a CPU run."""

    num_tasks: int = 64  # training tasks
    eval_tasks: int = 64  # held-out tasks, one episode each, evaluated before and after
    max_operand: int = 9  # operands of the questions lie in [0, max_operand]
    with_calculator: bool = True  # offer the calculator tool besides answer
    tokenizer_vocab: int = 512  # BPE trained on the environment's own rendered prompts
    hidden_size: int = 64  # tiny Qwen3 width
    num_layers: int = 2  # tiny Qwen3 depth
    seed: int = 0  # model init, task sampling, evaluation sampling


@dataclass
class ToyReport:
    held_out_before: dict[str, float]
    held_out_after: dict[str, float]
    result: GRPOResult


def toy_tokenizer(vocab_size: int = 512, *, with_calculator: bool = True) -> Any:
    """A BPE trained on the toy environment's rendered prompts and the tool-call snippets.

    A small vocabulary matters here: a random-init policy then writes one of the 10 digit
    tokens often enough (about 10/vocab per token) for GRPO to find reward in a few steps.
    """
    env = ArithmeticEnv(with_calculator=with_calculator)
    tasks = make_arithmetic_tasks(200, seed=12345, max_operand=9)
    tools = typing.cast(list[dict[Any, Any] | Callable[..., Any]], env.tools())
    rendered, _ = typing.cast(
        tuple[list[str], list[Any]],
        render_jinja_template(
            conversations=[env.reset(t) for t in tasks], tools=tools,
            chat_template=CHAT_TEMPLATE, add_generation_prompt=True,
        ),
    )  # fmt: skip
    return train_tokenizer([*rendered, *tool_call_snippets()], vocab_size=vocab_size)


def toy_model(toy: ToyRun, tokenizer: PreTrainedTokenizerBase, device: str = "cpu") -> nn.Module:
    spec = TinyModelSpec(vocab_size=len(tokenizer), hidden_size=toy.hidden_size,
                         num_layers=toy.num_layers)  # fmt: skip
    return load_model(spec, seed=toy.seed, device=device)


def run_toy_teacher(
    config: GRPOConfig,
    toy: ToyRun,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    engine: RolloutEngine | None = None,
    metrics: MetricsCallback | None = None,
) -> ToyReport:
    """GRPO on ArithmeticEnv tasks, with a held-out evaluation before and after."""

    def env_factory() -> ArithmeticEnv:
        return ArithmeticEnv(with_calculator=toy.with_calculator)

    engine = engine or TransformersEngine(typing.cast(PreTrainedModel, model), tokenizer)
    train = make_arithmetic_tasks(toy.num_tasks, seed=toy.seed, max_operand=toy.max_operand)
    held_out = make_arithmetic_tasks(toy.eval_tasks, seed=toy.seed + 1, max_operand=toy.max_operand)

    def evaluate() -> dict[str, float]:
        return evaluate_policy(
            engine, tokenizer, env_factory, held_out, max_rounds=config.max_rounds,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            seed=toy.seed + 7, reward_config=config.reward,
        )  # fmt: skip

    before = evaluate()
    result = train_grpo(
        config, model, tokenizer, env_factory, train, engine=engine, metrics=metrics
    )
    return ToyReport(before, evaluate(), result)
