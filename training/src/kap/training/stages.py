"""The three stages run from their YAML files: what `kap train ...` and the `train` queue call.

    kap train sft --config configs/train/sft-tiny.yaml [--set lr=1e-4] [--dataset NAME@V]
    kap train teacher --config configs/train/teacher-tiny.yaml [--set run.model=DIR]
    kap train distill --config configs/train/distill-tiny.yaml
    torchrun --standalone --nproc-per-node 8 -m kap.training.cli sft --config FILE

Each stage leaves its trained model (weights and tokenizer) in `<output_dir>/model`, the path
the next stage's config names: SFT's model is where the domain teachers start and the student
that distillation trains, and the teachers' models are distillation's teachers (every model of
the chain shares the SFT tokenizer, which SVA needs).

Config files: SFT's holds `SFTConfig` fields (flat, or under `sft:`). A teacher's holds `grpo:`
(`GRPOConfig`), `toy:` (`ToyRun`: its tasks and, for `model: tiny`, its tokenizer and model) and
`run:` (`TeacherRun`). Distillation's holds `distill:` (`DistillConfig`, with the teachers'
directories by domain), `tasks:` (`DistillTasks`) and `run:` (`DistillRun`). `--set a.b=VALUE`
overrides a field before the file is checked (VALUE is read as YAML: `3`, `1e-4`, `true`).

Metrics go to `<output_dir>/metrics.jsonl` and, with an engine, to `training_runs` /
`run_metrics` (rank 0 only); a dataset snapshot's id and content hash are written on the run.

The teacher and distillation stages run on the toy arithmetic environment
(`kap.training.environments.ArithmeticEnv`) on a CPU: the self-play environments of the real
domains implement the same `Environment` protocol and plug in at `env_factory`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
import yaml
from torch import nn
from transformers import PreTrainedTokenizerBase

from kap.platform.db.models import TrainingStage
from kap.training.chat import load_conversations_jsonl
from kap.training.checkpoint import export_model
from kap.training.config import ConfigError, config_from_mapping, config_to_dict
from kap.training.datasets import Snapshot
from kap.training.distill import DistillConfig, train_distill
from kap.training.distributed import (
    DistContext,
    all_reduce_sum,
    destroy_distributed,
    init_distributed,
    shard_model,
)
from kap.training.environments import ArithmeticEnv, Task, make_arithmetic_tasks
from kap.training.errors import TrainingError
from kap.training.grpo import (
    GRPOConfig,
    GRPOConfigError,
    ToyRun,
    run_toy_teacher,
    toy_model,
    toy_tokenizer,
)
from kap.training.modeling import load_model
from kap.training.rollout import RolloutEngine, VLLMEngine
from kap.training.runs import (
    JsonlRecorder,
    MemoryRecorder,
    MultiRecorder,
    PostgresRecorder,
    RunRecorder,
    finishing,
)
from kap.training.sft import SFTConfig, SFTConfigError, load_sft_data, train_sft
from kap.training.tokenizer import IM_END, load_tokenizer, special_token_ids

log = logging.getLogger(__name__)
STAGES = ("sft", "teacher", "distill")


# ---- config files ----


def read_stage_file(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping of a stage file with `a.b=VALUE` overrides applied."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. lr=1e-4, run.model=DIR)")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return data


def section(
    data: Mapping[str, Any], name: str, cls: type[Any], error: type[ConfigError], *,
    flat_ok: bool = False,
) -> Any:  # fmt: skip
    """`cls` from `data[name]`; with `flat_ok`, the whole mapping when it has no such section."""
    values = data.get(name, data if flat_ok else {})
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise error(f"section {name!r}: expected a mapping of {cls.__name__} fields")
    return config_from_mapping(cls, values, error=error, where=name)


def _check_sections(data: Mapping[str, Any], allowed: set[str], stage: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{stage} config: unknown section(s) {unknown}; expected {sorted(allowed)}"
        )


@dataclass(frozen=True)
class TeacherRun:
    """The `run:` section of a teacher config."""

    name: str = "teacher"  # the training_runs row's name
    model: str = "tiny"  # "tiny" (built from the toy: section) or a checkpoint dir (SFT's model)
    domain: str = "default"  # the domain this teacher serves (distillation routes by it)
    output_dir: str = "runs/teacher"  # the trained teacher goes to <output_dir>/model
    engine: str = "transformers"  # rollouts: "transformers" (CPU, 1 GPU) or "vllm" (GPUs)


@dataclass(frozen=True)
class DistillRun:
    """The `run:` section of a distillation config."""

    name: str = "distill"  # the training_runs row's name
    model: str = ""  # the student: a checkpoint dir (SFT's model), whose tokenizer all share
    output_dir: str = "runs/distill"  # the distilled student goes to <output_dir>/model


@dataclass(frozen=True)
class DistillTasks:
    """The `tasks:` section: arithmetic prompts, labelled with each teacher's domain in turn."""

    num_tasks: int = 64  # training prompts, spread over the domains
    eval_tasks: int = 16  # held-out prompts for the before/after reverse KL
    max_operand: int = 9  # operands lie in [0, max_operand]
    # domain -> ArithmeticEnv options; a domain missing here gets the calculator
    envs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0


# ---- results and recording ----


@dataclass
class StageResult:
    """What a stage run did: where its model is, its run row, its curves' start and end."""

    stage: str
    model_dir: Path | None
    run_id: str | None
    curves: dict[str, tuple[float, float]]  # metric -> (first value, last value)


@dataclass
class Recording:
    """Where a stage's metrics go; only rank 0 writes anything."""

    engine: sa.Engine | None = None  # the trajectory store; None: metrics.jsonl only
    idempotency_key: str | None = None  # a redelivered task or a rerun reuses the run row
    dataset: Snapshot | None = None

    def recorder(
        self, ctx: DistContext, stage: TrainingStage, name: str, base_model: str,
        config: Mapping[str, Any], output_dir: str,
    ) -> tuple[RunRecorder, MemoryRecorder, str | None]:  # fmt: skip
        curves = MemoryRecorder()  # what the command prints at the end
        if not ctx.is_main:
            return curves, curves, None
        parts: list[RunRecorder] = [curves, JsonlRecorder(Path(output_dir) / "metrics.jsonl",
                                                          config=config)]  # fmt: skip
        run_id = None
        if self.engine is not None:
            pg = PostgresRecorder(
                self.engine, name=name, stage=stage, base_model=base_model, config=config,
                idempotency_key=self.idempotency_key, checkpoint_dir=output_dir,
                dataset_id=self.dataset.id if self.dataset else None,
                dataset_hash=self.dataset.content_hash if self.dataset else None,
            )  # fmt: skip
            parts.append(pg)
            run_id = str(pg.run_id)
        return MultiRecorder(*parts), curves, run_id


def _publish_model(source: Path, output_dir: str) -> Path:
    """Copy a checkpoint's model dir to <output_dir>/model, replacing what was there."""
    target = Path(output_dir) / "model"
    staging = target.with_name(".model-staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


# ---- stage 1 ----


def run_sft(data: Mapping[str, Any], recording: Recording | None = None) -> StageResult:
    """SFT on the config's JSONL, or on `recording.dataset` (a frozen snapshot) when given."""
    recording = recording or Recording()
    config = cast(SFTConfig, section(data, "sft", SFTConfig, SFTConfigError, flat_ok=True))
    if recording.dataset is not None:
        conversations, held_out = recording.dataset.conversations, None
        if config.eval_data is not None:
            held_out = load_conversations_jsonl(config.eval_data)
    else:
        conversations, held_out = load_sft_data(config)
    ctx = init_distributed(device=config.device)
    recorder, curves, run_id = recording.recorder(
        ctx, TrainingStage.SFT, Path(config.output_dir).name, config.model, config.to_dict(),
        config.output_dir,
    )  # fmt: skip
    # train_sft finishes the recorder itself (succeeded / failed / cancelled).
    result = train_sft(config, conversations, recorder, eval_conversations=held_out, ctx=ctx)
    model_dir = None
    if ctx.is_main and result.model_dir is not None:
        model_dir = _publish_model(result.model_dir, config.output_dir)
    destroy_distributed()
    return StageResult("sft", model_dir, run_id, curves.curves())


# ---- stage 2 ----


def _policy(
    run: TeacherRun, toy: ToyRun, ctx: DistContext
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    if run.model == "tiny":
        tokenizer = toy_tokenizer(toy.tokenizer_vocab, with_calculator=toy.with_calculator)
        return toy_model(toy, tokenizer, device=str(ctx.device)), tokenizer
    return load_model(run.model, device=ctx.device), load_tokenizer(run.model)


def run_teacher(data: Mapping[str, Any], recording: Recording | None = None) -> StageResult:
    """GRPO for one domain teacher on the toy environment, from `run.model`."""
    recording = recording or Recording()
    _check_sections(data, {"grpo", "toy", "run"}, "teacher")
    config = cast(GRPOConfig, section(data, "grpo", GRPOConfig, GRPOConfigError))
    toy = cast(ToyRun, section(data, "toy", ToyRun, GRPOConfigError))
    run = cast(TeacherRun, section(data, "run", TeacherRun, GRPOConfigError))
    if run.engine not in ("transformers", "vllm"):
        raise GRPOConfigError(f"run.engine: expected 'transformers' or 'vllm', got {run.engine!r}")
    ctx = init_distributed()
    model, tokenizer = _policy(run, toy, ctx)
    engine: RolloutEngine | None = None
    if run.engine == "vllm":
        if run.model == "tiny":
            raise TrainingError("run.engine vllm needs run.model (a checkpoint directory)")
        # one colocated vLLM engine per rank (vLLM's torchrun-aware executor, as TRL's colocate)
        extra: dict[str, Any] = {}
        if ctx.is_distributed:
            extra["distributed_executor_backend"] = "external_launcher"
        stop = special_token_ids(tokenizer, [IM_END])
        engine = VLLMEngine(run.model, stop_token_ids=stop, seed=config.seed + ctx.rank, **extra)
    elif ctx.is_distributed:
        raise TrainingError("multi-GPU GRPO rolls out with vLLM: set run.engine: vllm")
    model = shard_model(model, ctx, mixed_precision=ctx.device.type == "cuda")
    values = {
        "grpo": config_to_dict(config),
        "toy": config_to_dict(toy),
        "run": config_to_dict(run),
    }
    recorder, curves, run_id = recording.recorder(
        ctx, TrainingStage.GRPO, run.name, run.model, values, run.output_dir
    )
    with finishing(recorder):
        report = run_toy_teacher(config, toy, model, tokenizer, engine=engine,
                                 metrics=recorder.log)  # fmt: skip
        recorder.log(0, {f"held_out/{k}": v for k, v in report.held_out_before.items()})
        recorder.log(config.steps, {f"held_out/{k}": v for k, v in report.held_out_after.items()})
        out = export_model(model, tokenizer, Path(run.output_dir) / "model", ctx)
    destroy_distributed()
    return StageResult("teacher", out if ctx.is_main else None, run_id, curves.curves())


# ---- stage 3 ----


def distill_tasks(spec: DistillTasks, domains: Sequence[str]) -> tuple[list[Task], list[Task]]:
    """Training and held-out prompts, labelled with the domains in turn."""

    def labelled(n: int, seed: int) -> list[Task]:
        made = make_arithmetic_tasks(n, seed=seed, max_operand=spec.max_operand)
        return [replace(t, domain=domains[i % len(domains)]) for i, t in enumerate(made)]

    return labelled(spec.num_tasks, spec.seed), labelled(spec.eval_tasks, spec.seed + 1)


def run_distill(data: Mapping[str, Any], recording: Recording | None = None) -> StageResult:
    """Multi-teacher on-policy distillation of `run.model` toward `distill.teachers`."""
    recording = recording or Recording()
    _check_sections(data, {"distill", "tasks", "run"}, "distill")
    config = cast(DistillConfig, section(data, "distill", DistillConfig, ConfigError))
    spec = cast(DistillTasks, section(data, "tasks", DistillTasks, ConfigError))
    run = cast(DistillRun, section(data, "run", DistillRun, ConfigError))
    if not run.model:
        raise ConfigError("run.model: the student's checkpoint directory is required")
    if not config.teachers:
        raise ConfigError("distill.teachers: give at least one `domain: checkpoint dir`")
    ctx = init_distributed()
    student, tokenizer = load_model(run.model, device=ctx.device), load_tokenizer(run.model)
    teachers = {d: load_model(path, device=ctx.device) for d, path in config.teachers.items()}
    domains = sorted(teachers)
    tasks, held_out = distill_tasks(spec, domains)
    envs = {d: dict(spec.envs.get(d, {})) for d in domains}

    def env_factory(domain: str) -> ArithmeticEnv:
        return ArithmeticEnv(**envs[domain])

    values = {"distill": config_to_dict(config), "tasks": config_to_dict(spec),
              "run": config_to_dict(run)}  # fmt: skip
    recorder, curves, run_id = recording.recorder(
        ctx, TrainingStage.DISTILL, run.name, run.model, values, run.output_dir
    )
    with finishing(recorder):
        # Its numbers go to the recorder (held_out/* at the first and the last step).
        train_distill(
            config, student, tokenizer, teachers, env_factory, tasks, held_out,
            metrics=recorder.log, all_reduce=all_reduce_sum if ctx.is_distributed else None,
        )  # fmt: skip
        out = export_model(student, tokenizer, Path(run.output_dir) / "model", ctx)
    destroy_distributed()
    return StageResult("distill", out if ctx.is_main else None, run_id, curves.curves())


RUNNERS = {"sft": run_sft, "teacher": run_teacher, "distill": run_distill}


def run_stage(
    stage: str, config_path: str | Path, overrides: Sequence[str] = (),
    recording: Recording | None = None,
) -> StageResult:  # fmt: skip
    """Read the stage's file (with overrides) and run it; errors name the file."""
    if stage not in RUNNERS:
        raise TrainingError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    data = read_stage_file(config_path, overrides)
    try:
        return RUNNERS[stage](data, recording)
    except ConfigError as exc:
        raise type(exc)(f"{config_path}: {exc}") from exc
