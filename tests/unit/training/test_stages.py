"""The stages run from their YAML files (what `kap train` and the `train` queue call): overrides,
config errors that name the file and the field, and the whole chain SFT -> two teachers ->
distillation on the CPU, each stage reading the model the one before it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kap.training.config import ConfigError
from kap.training.demo_data import write_demo_conversations
from kap.training.errors import TrainingError
from kap.training.grpo import GRPOConfig
from kap.training.modeling import load_model
from kap.training.runs import read_jsonl_metrics
from kap.training.stages import read_stage_file, run_stage, section
from kap.training.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[3]
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16,
        "intermediate_size": 64}  # fmt: skip


def write(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---- config files ----


def test_overrides_set_nested_fields_with_yaml_values(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"grpo": {"steps": 3}, "run": {"model": "tiny"}})
    data = read_stage_file(path, ["grpo.steps=7", "grpo.lr=1e-4", "run.model=some/dir",
                                  "toy.with_calculator=false", "run.name="])  # fmt: skip
    assert data == {
        "grpo": {"steps": 7, "lr": "1e-4"},  # YAML 1.1; the float field takes it (below)
        "run": {"model": "some/dir", "name": None},
        "toy": {"with_calculator": False},
    }
    assert section(data, "grpo", GRPOConfig, ConfigError).lr == 1e-4
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        read_stage_file(path, ["steps"])
    with pytest.raises(ConfigError, match="'steps' is not a section"):
        read_stage_file(path, ["grpo.steps.x=1"])


@pytest.mark.parametrize(
    ("stage", "data", "message"),
    [
        ("teacher", {"grpo": {"stepz": 1}}, r"grpo: unknown field 'stepz' \(did you mean 'steps'"),
        ("teacher", {"gpro": {}}, r"unknown section\(s\) \['gpro'\]"),
        ("teacher", {"run": {"engine": "tgi"}}, "run.engine"),
        ("teacher", {"grpo": {"dynamic_sampling": False}}, "quote the word, e.g. 'off'"),
        ("distill", {"run": {"model": ""}, "distill": {"teachers": {"a": "x"}}}, "run.model"),
        ("distill", {"run": {"model": "x"}}, "distill.teachers"),
        ("distill", {"tasks": {"num_tasks": "many"}}, "tasks.num_tasks: expected int"),
        ("sft", {"lr": -1.0}, "SFTConfig.lr: must be > 0"),
        ("sft", {"sft": {"batch_sise": 2}}, "did you mean 'batch_size'"),
    ],
)
def test_config_errors_name_the_file_and_the_field(
    tmp_path: Path, stage: str, data: dict[str, object], message: str
) -> None:
    path = write(tmp_path / f"{stage}.yaml", data)
    with pytest.raises(ConfigError, match=message) as info:
        run_stage(stage, path)
    assert str(path) in str(info.value)


def test_unknown_stage_and_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="unknown stage 'rlhf'"):
        run_stage("rlhf", tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="cannot read the config"):
        run_stage("sft", tmp_path / "missing.yaml")


def test_the_shipped_tiny_configs_parse() -> None:
    for name, sections in (("sft", None), ("teacher", {"grpo", "toy", "run"}),
                           ("distill", {"distill", "tasks", "run"})):  # fmt: skip
        data = read_stage_file(ROOT / "configs" / "train" / f"{name}-tiny.yaml")
        if sections:
            assert set(data) == sections


# ---- the chain ----


def changed(before: Path, after: Path) -> bool:
    pairs = zip(load_model(before).parameters(), load_model(after).parameters(), strict=True)
    return any(not torch.equal(a, b) for a, b in pairs)


def test_sft_then_two_teachers_then_distillation(tmp_path: Path) -> None:
    """Each stage leaves <output_dir>/model; the next starts from it; metrics reach the file."""
    data = write_demo_conversations(tmp_path / "conversations.jsonl", 24, seed=2)
    sft = write(tmp_path / "sft.yaml", {
        "tiny_model": TINY, "tokenizer_vocab_size": 512, "tokenizer_corpus_limit": 60,
        "data": str(data), "eval_fraction": 0.2, "batch_size": 4, "max_length": 1024,
        "micro_batch_rows": 2, "max_steps": 3, "lr": 3e-3, "warmup_steps": 1,
        "output_dir": str(tmp_path / "sft"), "checkpoint_every": 0, "eval_every": 0,
    })  # fmt: skip
    first = run_stage("sft", sft)
    assert first.model_dir == tmp_path / "sft" / "model"
    assert load_model(first.model_dir).config.vocab_size == len(load_tokenizer(first.model_dir))
    assert "loss" in first.curves and "eval_loss" in first.curves
    steps = [step for step, values in read_jsonl_metrics(tmp_path / "sft" / "metrics.jsonl")
             if "loss" in values]  # fmt: skip
    assert steps == [1, 2, 3]

    teacher = ROOT / "configs" / "train" / "teacher-tiny.yaml"
    small = ["grpo.steps=1", "grpo.tasks_per_step=2", "grpo.group_size=2",
             "grpo.max_new_tokens=4", "grpo.max_rounds=1", "toy.eval_tasks=2",
             "grpo.dynamic_sampling='off'", "grpo.ent_coef=0.01",  # an update even without reward
             f"run.model={first.model_dir}"]  # fmt: skip
    teachers = {}
    for domain, calculator in (("calculator", "true"), ("mental", "false")):
        out = tmp_path / f"teacher-{domain}"
        settings = [f"run.domain={domain}", f"toy.with_calculator={calculator}",
                    f"run.output_dir={out}"]  # fmt: skip
        result = run_stage("teacher", teacher, [*small, *settings])
        assert result.model_dir == out / "model"
        assert "held_out/correct_mean" in result.curves
        assert changed(first.model_dir, result.model_dir)
        teachers[domain] = str(result.model_dir)

    distill = ROOT / "configs" / "train" / "distill-tiny.yaml"
    result = run_stage("distill", distill, [
        f"distill.teachers={json.dumps(teachers)}", "distill.steps=2", "distill.tasks_per_step=2",
        "distill.max_new_tokens=4", "tasks.num_tasks=4", "tasks.eval_tasks=2",
        f"run.model={first.model_dir}", f"run.output_dir={tmp_path / 'distill'}",
    ])  # fmt: skip
    assert result.model_dir == tmp_path / "distill" / "model"
    for domain in teachers:
        assert f"held_out/kl/{domain}" in result.curves
    assert result.curves["held_out/full_kl/mental"][0] > 0  # the teachers differ from the student
    assert changed(first.model_dir, result.model_dir)  # the distilled student, not a copy of SFT
    finished = [line for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("event") == "finish"]  # fmt: skip
    assert json.loads(finished[-1])["status"] == "succeeded"


def test_a_missing_checkpoint_is_named_before_anything_runs(tmp_path: Path) -> None:
    config = write(tmp_path / "d.yaml", {
        "distill": {"teachers": {"a": str(tmp_path / "no-such-teacher")}},
        "run": {"model": str(tmp_path / "no-such-student"), "output_dir": str(tmp_path / "o")},
    })  # fmt: skip
    with pytest.raises(TrainingError, match="no-such-student"):
        run_stage("distill", config)
    assert not (tmp_path / "o").exists()
