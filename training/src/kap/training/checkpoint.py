"""Training checkpoints: everything a run needs to continue from the exact next sample.

Layout of one checkpoint, `<run_dir>/checkpoints/step-00000042/`:

    state.json        step, consumed samples/packs/tokens, eval history, trainer extras, config
    model/            the HF model (`save_pretrained`: safetensors + config.json) and tokenizer;
                      `kap.training.modeling.load_model(path / "model")` reads it
    optimizer.pt      optimizer state (one process)
    dcp/              model + optimizer shards written by torch.distributed.checkpoint (FSDP2)
    scheduler.pt      LR scheduler state
    rng-rank{r}.pt    python / numpy / torch (and CUDA) RNG states of each rank

One process: weights go through `save_pretrained`, optimizer state through `torch.save`.
Sharded (FSDP2, `distributed.is_sharded`): every rank writes its shards of the model and the
optimizer with `torch.distributed.checkpoint.save` on `get_state_dict` (sharded state dicts:
no rank ever holds the whole model), and reads them back with `dcp.load` + `set_state_dict`;
`model/` is written only when `full_model=True` (the final checkpoint), gathered to rank 0
with `get_model_state_dict(full_state_dict=True, cpu_offload=True)`.

Atomic: a checkpoint is assembled in `checkpoints/.tmp-step-…` and renamed into place after
`state.json` (written last) is complete; `latest_checkpoint` only sees renamed directories, so
a crash mid-save leaves the previous checkpoint as the latest. `keep` prunes older ones after.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from kap.training.distributed import DistContext, barrier, is_sharded
from kap.training.errors import CheckpointError

CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Counters of a run, saved in state.json; `extra` holds trainer-specific JSON values."""

    step: int = 0  # optimizer steps taken
    consumed_samples: int = 0  # conversations trained on, over all ranks
    consumed_packs: int = 0  # rows (packs or padded conversations) run forward, over all ranks
    trained_tokens: int = 0  # loss-bearing tokens, over all ranks
    eval_history: list[list[float]] = field(default_factory=list)  # [step, held-out loss] pairs
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What `load_checkpoint` read besides the tensors it put back in place."""

    path: Path
    state: TrainState
    config: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (those with state.json), oldest step first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints; returns the deleted paths."""
    if keep < 1:
        raise CheckpointError(f"keep must be >= 1, got {keep}")
    old = list_checkpoints(run_dir)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


# ---- RNG ----


def _rng_state() -> dict[str, Any]:
    np_state = cast(tuple[Any, ...], np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- model weights ----


def _save_pretrained(model: nn.Module, out: Path, state_dict: dict[str, Any] | None = None) -> None:
    if not isinstance(model, PreTrainedModel):
        raise CheckpointError(f"{type(model).__name__} is not a transformers PreTrainedModel")
    bars = hf_logging.is_progress_bar_enabled()
    cast(Any, hf_logging).disable_progress_bar()  # untyped in transformers
    try:
        model.save_pretrained(out, state_dict=state_dict)
    finally:
        if bars:
            cast(Any, hf_logging).enable_progress_bar()


def export_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    ctx: DistContext,
) -> Path:
    """Write the whole model as a HF checkpoint on rank 0 (gathered first when sharded).

    Every rank must call it when the model is sharded (the gather is a collective).
    """
    out = Path(out_dir)
    full: dict[str, Any] | None = None
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(model, options=options)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _save_pretrained(model, out, full)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return out


def _load_pretrained_weights(model: nn.Module, model_dir: Path) -> None:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir} holds no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(path))
    result = model.load_state_dict(weights, strict=False)
    # save_pretrained leaves out tied parameters (lm_head = embed_tokens): those may be missing.
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{model_dir}: weights do not match the model "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]})"
        )


# ---- save / load ----


def _begin(root: Path, name: str, ctx: DistContext) -> Path:
    tmp = root / f".tmp-{name}"
    if ctx.is_main:
        if tmp.exists():  # left by a crash during an earlier save of this step
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    if final.exists():  # re-saving a step (a resumed run reached it again): replace it
        trash = final.with_name(f".old-{final.name}")
        shutil.rmtree(trash, ignore_errors=True)
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash)
    else:
        tmp.rename(final)


def save_checkpoint(
    run_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: TrainState,
    config: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase | None = None,
    ctx: DistContext | None = None,
    keep: int | None = None,
    full_model: bool = True,
) -> Path:
    """Write checkpoint `step-{state.step}` atomically and return its path (all ranks call it).

    `full_model` only matters when sharded: also gather and write the HF `model/` directory.
    `keep`: afterwards delete all but the newest `keep` checkpoints.
    """
    ctx = ctx or DistContext()
    root = Path(run_dir) / CHECKPOINTS
    name = step_dir_name(state.step)
    tmp = _begin(root, name, ctx)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_state_dict
        from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / "dcp")
        if full_model:
            export_model(model, tokenizer, tmp / "model", ctx)
    elif ctx.is_main:
        export_model(model, tokenizer, tmp / "model", ctx)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / f"rng-rank{ctx.rank}.pt")
    barrier()
    final = root / name
    if ctx.is_main:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        meta = {
            "format": FORMAT_VERSION,
            "world_size": ctx.world_size,
            "sharded": is_sharded(model),
            "state": asdict(state),
            "config": dict(config),
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, default=str))
        _commit(tmp, final)
        if keep is not None:
            prune_checkpoints(run_dir, keep)
    barrier()
    return final


def _load_dcp(dcp_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    from torch.distributed.checkpoint import state_dict as dsd
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    if optimizer is None:
        model_only = dsd.get_model_state_dict(model)
        dcp_load({"model": model_only}, checkpoint_id=dcp_dir)
        dsd.set_model_state_dict(model, model_only)
        return
    model_sd, optim_sd = dsd.get_state_dict(model, optimizer)
    dcp_load({"model": model_sd, "optim": optim_sd}, checkpoint_id=dcp_dir)
    dsd.set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def read_checkpoint_meta(path: str | Path) -> LoadedCheckpoint:
    """state.json of a checkpoint, without touching any tensors."""
    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')}, expected 1")
    return LoadedCheckpoint(path=path, state=TrainState(**meta["state"]), config=meta["config"])


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ctx: DistContext | None = None,
    restore_rng: bool = True,
) -> LoadedCheckpoint:
    """Put the checkpoint's weights, optimizer and scheduler state and RNG back in place.

    The model (and optimizer) must be built as when saving (same shapes). A sharded checkpoint
    (dcp/) loads into a sharded model of any world size (DCP reshards) or into one process; a
    one-process checkpoint only into an unsharded model. All ranks call it.
    """
    ctx = ctx or DistContext()
    loaded = read_checkpoint_meta(path)
    path = loaded.path
    if (path / "dcp").is_dir():
        _load_dcp(path / "dcp", model, optimizer)
    elif is_sharded(model):
        raise CheckpointError(
            f"{path} was written by one process: resume it with one process, "
            f"or start a sharded run from its weights ({path / 'model'})"
        )
    else:
        _load_pretrained_weights(model, path / "model")
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{ctx.rank}.pt"
    if restore_rng and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return loaded
