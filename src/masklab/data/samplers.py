"""Samplers whose order depends only on (seed, position), so a resumed run sees the same data."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from masklab.errors import DataError


class InfiniteSampler(Sampler[int]):
    """An endless stream of dataset indices for iteration-based training.

    The global stream is epoch 0's order, then epoch 1's, ... where epoch ``e`` is a permutation
    drawn from a generator seeded with ``seed + e`` (or ``0..N-1`` without shuffling). Rank ``r`` of
    ``world_size`` takes global positions ``r, r + world_size, ...``, so within an epoch ranks see
    disjoint indices. Resuming at iteration ``start_iter`` skips exactly
    ``start_iter * batch_size`` of this rank's positions.

    Args:
        dataset_size: number of items.
        shuffle: permute each epoch.
        seed: base seed of the permutations.
        rank: this process's rank.
        world_size: number of processes.
        start_iter: iterations already done (resume).
        batch_size: per-rank batch size, to convert ``start_iter`` to samples.
    """

    def __init__(
        self,
        dataset_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        batch_size: int = 1,
    ) -> None:
        if dataset_size <= 0:
            raise DataError(f"InfiniteSampler: dataset_size={dataset_size}; the dataset is empty")
        if not 0 <= rank < world_size:
            raise DataError(
                f"InfiniteSampler: rank={rank} with world_size={world_size}; expected 0 <= rank < world_size"
            )
        self.dataset_size = dataset_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start_iter * batch_size

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.dataset_size, generator=g)

    def __iter__(self) -> Iterator[int]:
        return (index for _, index in self.positions())

    def positions(self) -> Iterator[tuple[int, int]]:
        """``(global position, dataset index)`` pairs of this rank's stream, from ``start_iter`` on.

        The global position numbers every draw of the whole run (epoch ``e``, slot ``i`` is
        ``e * dataset_size + i``) whatever the world size; loaders seed each sample's
        augmentation from it (:func:`masklab.data.loader.sample_seed`).
        """
        k = self.start
        epoch, order = -1, torch.empty(0, dtype=torch.int64)
        while True:
            pos = self.rank + k * self.world_size
            e, i = divmod(pos, self.dataset_size)
            if e != epoch:
                epoch, order = e, self._epoch_order(e)
            yield pos, int(order[i])
            k += 1


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``world_size`` takes indices ``r, r + world_size, ...`` once, in order.

    Unlike :class:`torch.utils.data.DistributedSampler` it never repeats samples to even out
    the ranks, so evaluation over shards counts every image exactly once (metrics reduced across
    ranks equal the single-process ones).
    """

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise DataError(
                f"ShardSampler: rank={rank} with world_size={world_size}; expected 0 <= rank < world_size"
            )
        self.indices = list(range(rank, dataset_size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
