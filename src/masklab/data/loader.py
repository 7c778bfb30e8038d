"""Building data loaders: samplers, collate and deterministic worker seeding.

``collate``, ``DataPreprocessor`` and ``InfiniteSampler`` live in their own files and are
re-exported here, the module the contracts name.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from masklab.data.collate import collate
from masklab.data.preprocessor import IMAGENET_MEAN, IMAGENET_STD, DataPreprocessor
from masklab.data.samplers import InfiniteSampler, ShardSampler
from masklab.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataPreprocessor",
    "InfiniteSampler",
    "ShardSampler",
    "build_dataloader",
    "collate",
    "worker_seed",
]


def worker_seed(seed: int, rank: int, worker_id: int, start_iter: int = 0) -> int:
    """The seed of one loader worker: distinct per (rank, worker, resume point), fixed per run config."""
    return int(np.random.SeedSequence([seed, rank, worker_id, start_iter]).generate_state(1)[0])


def _seed_worker(worker_id: int, seed: int, rank: int, start_iter: int) -> None:
    # Transforms draw from torch's global RNG; seed python/numpy too for user transforms.
    s = worker_seed(seed, rank, worker_id, start_iter)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def _dist_info(distributed: bool | None) -> tuple[int, int]:
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if not distributed:
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    infinite: bool = False,
    distributed: bool | None = None,
    start_iter: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A :class:`DataLoader` yielding :class:`~masklab.structures.Batch` objects.

    Args:
        dataset: a dataset returning :class:`~masklab.structures.Sample`.
        batch_size: per-process batch size.
        num_workers: loader worker processes (0 = load in the main process).
        shuffle: shuffle the order (per epoch, from ``seed``).
        seed: seed of the order and of the workers' RNGs.
        drop_last: drop the last incomplete batch (finite loaders).
        infinite: use :class:`InfiniteSampler` (iteration-based training).
        distributed: shard across ranks; None = whether a process group is initialised.
        start_iter: iterations already done; an infinite loader skips exactly that many batches.
        pin_memory: pin host memory for faster device copies.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise DataError(f"{type(dataset).__name__}: the dataset is empty; check its paths and split file")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}; expected a positive integer")
    rank, world = _dist_info(distributed)
    sampler: Sampler[int]
    if infinite:
        sampler = InfiniteSampler(
            size, shuffle, seed, rank, world, start_iter=start_iter, batch_size=batch_size
        )
    elif world > 1:
        if shuffle or drop_last:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        else:
            # Evaluation: disjoint shards, no padding repeats (every image counted once).
            sampler = ShardSampler(size, rank, world)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        # Datasets with their own sample type (MAL's BoxCropDataset) bring their own collate.
        collate_fn=getattr(dataset, "collate_fn", None) or collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_seed_worker, seed=seed, rank=rank, start_iter=start_iter),
        generator=torch.Generator().manual_seed(seed + rank),
        persistent_workers=num_workers > 0,
    )
