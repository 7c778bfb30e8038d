"""torch.distributed basics: start from torchrun's environment, reduce, gather, wrap and tear down.

Everything here degrades to a no-op in a single process, so the engine calls these helpers
unconditionally. Multi-node runs use torchrun's rendezvous; nothing here parses hosts.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from masklab.errors import ConfigError

Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this node; picks the CUDA device.
        is_distributed: whether a process group is initialised.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_distributed: bool = False


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_info() -> DistInfo:
    """The current :class:`DistInfo` (a single-process one when no group exists)."""
    if not is_initialized():
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        is_distributed=True,
    )


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's env vars (``RANK``, ``WORLD_SIZE``, ...).

    Without those variables (a plain ``python`` run) nothing is initialised. The backend is nccl
    when CUDA is available and gloo otherwise, unless given.
    """
    if is_initialized():
        return get_info()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # Bind the device before the group so NCCL communicators land on the right GPU.
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return get_info()


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes files and prints."""
    return get_info().rank == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def all_reduce_dict(values: dict[str, float], op: Literal["mean", "sum"] = "mean") -> dict[str, float]:
    """Reduce a dict of scalars over ranks. Every rank must pass the same keys."""
    if not is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if op == "mean":
        t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, strategy: Strategy = "ddp", device: torch.device | str = "cpu") -> nn.Module:
    """Wrap ``model`` for data-parallel training; returns it unchanged in a single process.

    Args:
        model: the model, already on ``device``.
        strategy: ``"ddp"`` (DistributedDataParallel) or ``"fsdp"`` (FullyShardedDataParallel).
        device: this rank's device.
    """
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(
            f"runtime.strategy: unknown distributed strategy {strategy!r}; expected 'ddp' or 'fsdp'"
        )
    if not is_initialized():
        return model
    device = torch.device(device)
    if strategy == "ddp":
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, device_id=device if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP/FSDP wrapper (the model itself otherwise)."""
    inner = getattr(model, "module", None)
    wrapped = (
        isinstance(model, nn.parallel.DistributedDataParallel)
        or type(model).__name__ == "FullyShardedDataParallel"
    )
    return inner if wrapped and isinstance(inner, nn.Module) else model


def teardown(wrapper: nn.Module | None = None) -> None:
    """End the process group safely.

    Order matters (DESIGN §5 "Known trap"): destroying the group while a DDP wrapper is still
    alive aborts a rank at exit about half the time on gloo. So the caller hands over its last
    reference to the wrapper, we drop ours and collect it, then barrier, then destroy. The caller
    must not keep another reference (``trainer.model`` included: call ``trainer.release_model()``).
    """
    del wrapper
    gc.collect()
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()
