"""Building data loaders: samplers, collate and deterministic per-sample augmentation seeds.

``collate``, ``DataPreprocessor`` and ``InfiniteSampler`` live in their own files and are
re-exported here, the module the contracts name.

Training loaders (``infinite=True``) seed every sample's random transforms from
``sample_seed(seed, position)``, its position in the run's global sample stream, instead of letting
a worker's RNG run on from one sample to the next. What a sample looks like therefore depends on
neither the loader's worker count nor the iteration it was (re)created at, which is what makes a
resumed run equal the uninterrupted one with worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from typing import Any

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
    get_worker_info,
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
    "SeededDataset",
    "ShardSampler",
    "build_dataloader",
    "collate",
    "sample_seed",
    "worker_seed",
]


def sample_seed(seed: int, position: int) -> int:
    """The seed of the random transforms of the sample drawn at global ``position`` of a run."""
    # SeedSequence takes non-negative entropy; torch accepts a negative runtime.seed, so wrap it.
    return int(np.random.SeedSequence([seed % 2**64, position]).generate_state(1)[0])


def worker_seed(seed: int, rank: int, worker_id: int, start_iter: int = 0) -> int:
    """The seed of one loader worker: distinct per (rank, worker, resume point), fixed per run config."""
    return int(np.random.SeedSequence([seed % 2**64, rank, worker_id, start_iter]).generate_state(1)[0])


def _seed_worker(worker_id: int, seed: int, rank: int, start_iter: int) -> None:
    # Transforms draw from torch's global RNG; seed python/numpy too for user transforms. (Infinite
    # loaders then reseed all three per sample: SeededDataset.)
    s = worker_seed(seed, rank, worker_id, start_iter)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def _seed_global_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's CPU global RNGs, which the transforms draw from."""
    random.seed(seed)
    np.random.seed(seed)
    # Not torch.manual_seed: in the main process that would also reseed the model's CUDA generators.
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def _kept_global_rngs() -> Iterator[None]:
    """Put the CPU global RNGs back after the block (the main process's also drive dropout and are
    checkpointed; a worker's serve nothing else, so workers skip the copies)."""
    states = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.default_generator.set_state(states[2])


class SeededDataset(Dataset):
    """``SeededDataset(ds, seed)[(index, position)]`` is ``ds[index]`` computed with the global RNGs
    seeded with ``sample_seed(seed, position)``: a sample's random transforms depend on the run's
    seed and where the sample sits in the stream, not on which process loads it or what it loaded
    before. Fed by :class:`_StreamPositions`.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        in_worker = get_worker_info() is not None
        with contextlib.nullcontext() if in_worker else _kept_global_rngs():
            _seed_global_rngs(sample_seed(self.seed, position))
            return self.dataset[index]


class _StreamPositions(Sampler[tuple[int, int]]):
    """``(dataset index, global position)`` for each draw of an :class:`InfiniteSampler`."""

    def __init__(self, sampler: InfiniteSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in self.sampler.positions():
            yield index, position


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
        seed: seed of the order, of the workers' RNGs and (infinite loaders) of every sample's
            random transforms.
        drop_last: drop the last incomplete batch (finite loaders).
        infinite: use :class:`InfiniteSampler` (iteration-based training); each sample's random
            transforms then draw from ``sample_seed(seed, global position)`` (module docstring).
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
    # Datasets with their own sample type (MAL's BoxCropDataset) bring their own collate.
    collate_fn = getattr(dataset, "collate_fn", None) or collate
    sampler: Sampler[Any]
    if infinite:
        stream = InfiniteSampler(
            size, shuffle, seed, rank, world, start_iter=start_iter, batch_size=batch_size
        )
        sampler, dataset = _StreamPositions(stream), SeededDataset(dataset, seed)
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
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_seed_worker, seed=seed, rank=rank, start_iter=start_iter),
        generator=torch.Generator().manual_seed(seed + rank),
        persistent_workers=num_workers > 0,
    )
