"""torch.distributed basics: start from torchrun's environment, reduce, gather, wrap and tear down.

Everything here degrades to a no-op in a single process, so the engine calls these helpers
unconditionally. Multi-node runs use torchrun's rendezvous; nothing here parses hosts.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
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


def init_distributed(backend: str | None = None, device: torch.device | str | None = None) -> DistInfo:
    """Join the process group described by torchrun's env vars (``RANK``, ``WORLD_SIZE``, ...).

    Without those variables (a plain ``python`` run) nothing is initialised. Unless ``backend`` is
    given it follows the device the run computes on: nccl for CUDA, gloo for CPU (``device`` None:
    CUDA when available). Each nccl process needs a GPU of its own: more processes on a node than
    visible GPUs is a one-line :class:`ConfigError`, not a CUDA error from one rank.
    """
    if is_initialized():
        return get_info()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        backend = "nccl" if on_cuda else "gloo"
    if backend == "nccl":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ConfigError(
                f"runtime.device: process LOCAL_RANK {local_rank} needs a GPU of its own but "
                f"{visible} CUDA device(s) are visible; start at most {visible} per node "
                f"(torchrun --nproc-per-node {visible}) or run on CPU with runtime.device=cpu (gloo)"
            )
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


def wrap_model(
    model: nn.Module, strategy: Strategy = "ddp", device: torch.device | str = "cpu", *, sync_bn: bool = False
) -> nn.Module:
    """Wrap ``model`` for data-parallel training; returns it unchanged in a single process.

    Args:
        model: the model, already on ``device``.
        strategy: ``"ddp"`` (DistributedDataParallel) or ``"fsdp"`` (FSDP2 ``fully_shard``, in
            place; build the optimizer after wrapping).
        device: this rank's device.
        sync_bn: ``runtime.sync_bn``: every BatchNorm becomes a ``SyncBatchNorm`` over the process
            group first (MMSeg's ``norm_cfg=dict(type='SyncBN')`` in every module). A single
            process keeps its BatchNorms, which compute the same statistics there.

    Raises:
        ConfigError: an unknown strategy, or ``sync_bn`` on CPU (torch's SyncBatchNorm refuses
            CPU tensors at the first forward).
    """
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(
            f"runtime.strategy: unknown distributed strategy {strategy!r}; expected 'ddp' or 'fsdp'"
        )
    if not is_initialized():
        return model
    device = torch.device(device)
    if sync_bn:
        check_sync_bn(sync_bn, device)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if strategy == "ddp":
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return _fully_shard(model, device)


def check_sync_bn(sync_bn: bool, device: torch.device | str) -> None:
    """``runtime.sync_bn`` on a CPU run of several processes is a :class:`ConfigError` (torch's
    SyncBatchNorm refuses CPU tensors at the first forward); ``train --nproc`` asks this before
    it starts torchrun, so the error is one line rather than one per rank."""
    if sync_bn and torch.device(device).type == "cpu":
        raise ConfigError(
            "runtime.sync_bn: SyncBatchNorm runs on GPUs only, and this distributed run is on CPU; "
            "set runtime.sync_bn: false (each process then normalises over its own batch)"
        )


def _fully_shard(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): each direct child holding parameters is one
    shard unit (backbone, neck, heads), then the root takes whatever is left (``ModuleList`` /
    ``ModuleDict`` children included). Works on CPU with
    gloo and on CUDA with nccl. The model keeps its class (plus ``FSDPModule``) and its parameter
    names, so optimizers, param groups and state-dict keys are those of the bare model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for child in model.children():
        # fully_shard refuses containers without a forward (an FPN's ModuleList of lateral
        # convs): the root takes their parameters.
        container = isinstance(child, (nn.ModuleList, nn.ModuleDict))
        if not container and any(p.requires_grad for p in child.parameters()):
            fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP (FSDP2 ``fully_shard`` or the FSDP1 wrapper)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - very old torch
        FSDPModule = ()  # type: ignore[assignment]  # noqa: N806
    return isinstance(model, FSDPModule) or type(model).__name__ == "FullyShardedDataParallel"


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order (the order of its integer state keys)."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    try:
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError as exc:  # pragma: no cover - an optimizer over foreign tensors
        raise ConfigError("optimizer holds a tensor that is not a parameter of the model") from exc


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bare model's full state dict. Under FSDP every rank must call this (it gathers the
    shards); rank 0 gets the full CPU tensors and the other ranks an empty dict."""
    if not is_fsdp(model):
        return unwrap(model).state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` in the usual integer-keyed layout, whatever the strategy.

    Under FSDP the full state is gathered (collective; rank 0 gets it, the others an empty dict)
    and re-keyed from parameter names to the optimizer's parameter order, so one checkpoint format
    serves single-process, DDP and FSDP runs and resumes across them."""
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_full_options())
    if not full:
        return {}
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[n]: v for n, v in full.get("state", {}).items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]],
    }


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (bare-model) state dict; under FSDP each rank keeps its own shard."""
    if not is_fsdp(model):
        unwrap(model).load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load an integer-keyed optimizer state (as :func:`optimizer_state_dict` saves it)."""
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, optimizer)
    full = {
        "state": {names[int(i)]: v for i, v in state.get("state", {}).items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=full, options=StateDictOptions(full_state_dict=True)
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP or FSDP1 wrapper (the model itself otherwise; FSDP2's
    ``fully_shard`` shards in place, so the model is its own bare model)."""
    inner = getattr(model, "module", None)
    wrapped = (
        isinstance(model, nn.parallel.DistributedDataParallel)
        or type(model).__name__ == "FullyShardedDataParallel"
    )
    return inner if wrapped and isinstance(inner, nn.Module) else model


@contextlib.contextmanager
def full_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """The module to evaluate with, holding full (unsharded) parameters for the block.

    DDP: the bare module (no gradient sync). FSDP2: every shard unit is all-gathered once on
    entry (all ranks must enter together) and kept gathered, so forwards inside the block run no
    collectives and ranks may evaluate different numbers of batches; on exit the shards return.
    """
    if not is_fsdp(model):
        yield unwrap(model)
        return
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):  # FSDP1 wrapper
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield model.module  # type: ignore[misc]
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    before = []
    for m in units:
        group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)
        before.append(bool(getattr(group, "_reshard_after_forward", True)))
        m.set_reshard_after_forward(False, recurse=False)
    for m in units:
        m.unshard()
    try:
        yield model
    finally:
        for m, flag in zip(units, before):
            m.reshard()
            m.set_reshard_after_forward(flag, recurse=False)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as rank 0's checkpoint holds them.

    Each rank updates its BatchNorm statistics from its own batches; DDP copies rank 0's over them
    only at the start of a training forward, FSDP never. Called before validation, so every rank
    evaluates the model that rank 0 saves and that ``masklab evaluate`` later loads (under FSDP the
    in-training metrics and those of the checkpoint differed)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer.data, src=0)


def teardown(wrapper: nn.Module | None = None, *, sync: bool = True) -> None:
    """End the process group safely.

    Order matters (DESIGN §5 "Known trap"): destroying the group while a DDP wrapper is still
    alive aborts a rank at exit about half the time on gloo. So the caller hands over its last
    reference to the wrapper, we drop ours and collect it, then barrier, then destroy. The caller
    must not keep another reference (``trainer.model`` included: call ``trainer.release_model()``).

    ``sync=False`` on an error path: a rank that failed alone must not wait in a barrier that the
    other ranks, still inside a training or gather collective, never reach (the job would hang
    until the backend's timeout, 30 minutes on gloo, before any error is printed). It destroys
    the group at once, so it exits with its error and torchrun ends the other ranks.
    """
    del wrapper
    gc.collect()
    if is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()
