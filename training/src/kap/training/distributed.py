"""One process or many: the rank/device context, the collectives the trainers need, FSDP2 sharding.

Under `torchrun` the environment names the process (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); `init_distributed()` reads it once and joins the process group (nccl on CUDA,
gloo on CPU). Without it the context is a single process and every collective here is a no-op,
so the trainers run the same code in tests and on a node of 8 GPUs (launch commands: the
docstring of `kap.training.sft`).

Sharding is FSDP2 (`torch.distributed.fsdp.fully_shard`): each decoder layer is one unit (its
parameters are all-gathered just before its forward and freed after), then the root holds the
embeddings, the final norm and the LM head. Parameters stay float32 (the optimizer's master
copy); with `mixed_precision` the all-gathered compute copy is bfloat16 and gradients are
reduced in float32. FSDP2 averages gradients over ranks (reduce-scatter with a 1/world_size
factor): a trainer whose loss is normalised by a global count multiplies it by world_size.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kap.training.errors import TrainingError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among world_size processes and the device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, records metrics and writes single-writer files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(local_rank: int, device: str | None) -> torch.device:
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(
    *, device: str | None = None, env: Mapping[str, str] | None = None, timeout_s: int = 1800
) -> DistContext:
    """The context of this process; joins the process group when launched by torchrun.

    `device`: "auto"/None (cuda:LOCAL_RANK when CUDA is available, else cpu) or an explicit one.
    `env` defaults to the process environment (torchrun's variables are read here and only here).
    Idempotent: a second call reuses the process group.
    """
    env = os.environ if env is None else env
    if not all(k in env for k in TORCHRUN_VARS) or int(env["WORLD_SIZE"]) <= 1:
        return DistContext(device=_pick_device(0, device))
    rank, world, local = (int(env[k]) for k in TORCHRUN_VARS)
    ctx = DistContext(rank, world, local, _pick_device(local, device))
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    if not dist.is_initialized():
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=dt.timedelta(seconds=timeout_s)
        )
    return ctx


def destroy_distributed() -> None:
    """Leave the process group (end of a torchrun script); a no-op for one process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum `tensor` over ranks in place and return it; unchanged with one process."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Maximum of `tensor` over ranks in place and return it; unchanged with one process."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier() -> None:
    """Wait for every rank; a no-op with one process."""
    if _active():
        dist.barrier()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP wraps one by one: the classes a HF model lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainingError(f"{type(model).__name__}: no decoder layers found to shard")
    return layers


def is_sharded(model: nn.Module) -> bool:
    """True when `shard_model` wrapped the model (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, ctx: DistContext, *, mixed_precision: bool) -> nn.Module:
    """FSDP2: `fully_shard` each decoder layer, then the root; the model itself with one process.

    Call after moving the model to `ctx.device` and before building the optimizer (it must see
    the sharded parameters).
    """
    if not ctx.is_distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if mixed_precision else None,
        reduce_dtype=torch.float32 if mixed_precision else None,
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def set_gradient_sync(model: nn.Module, *, enabled: bool) -> None:
    """Under FSDP2, skip (or resume) the reduce-scatter of gradients: accumulate locally
    over micro-batches and reduce once, at the last one. A no-op for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
