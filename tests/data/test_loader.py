from __future__ import annotations

import itertools

import pytest
import torch

from masklab.data.loader import DataPreprocessor, InfiniteSampler, build_dataloader, collate
from masklab.errors import DataError, ModelError

from .helpers import make_sample


def test_collate_pads_with_documented_values() -> None:
    a, b = make_sample(10, 14, seed=1), make_sample(16, 8, seed=2)
    batch = collate([a, b])
    assert batch.images.shape == (2, 3, 16, 14)
    assert batch.images.dtype == torch.uint8
    assert torch.equal(batch.images[0, :, :10, :14], a.image)
    assert (batch.images[0, :, 10:, :] == 0).all() and (batch.images[1, :, :, 8:] == 0).all()
    assert (batch.semantic[0, 10:, :] == 255).all() and (batch.semantic[1, :, 8:] == 255).all()
    assert torch.equal(batch.semantic[1, :, :8], b.semantic)
    assert not batch.instances[0].masks[:, 10:, :].any()
    assert batch.instances[0].masks.shape[-2:] == (16, 14)
    assert [m.img_shape for m in batch.metas] == [(10, 14), (16, 8)]


def test_preprocessor_normalises_and_pads() -> None:
    a, b = make_sample(10, 14, seed=1), make_sample(16, 8, seed=2)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)
    pre = DataPreprocessor(mean=mean, std=std, size_divisor=8, pad_val=-7.0, seg_pad_val=200)
    out = pre(collate([a, b]), training=True)
    assert out.images.shape == (2, 3, 16, 16)
    assert out.images.dtype == torch.float32
    expected = (a.image.float() - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out.images[0, :, :10, :14], expected)
    # collate padding and size-divisor padding both carry pad_val / seg_pad_val
    assert (out.images[0, :, 10:, :] == -7.0).all() and (out.images[0, :, :, 14:] == -7.0).all()
    assert (out.images[1, :, :, 8:] == -7.0).all()
    assert (out.semantic[0, 10:, :] == 200).all() and (out.semantic[1, :, 8:] == 200).all()
    assert out.instances[1].masks.shape[-2:] == (16, 16)
    assert all(m.pad_shape == (16, 16) for m in out.metas)
    assert [m.img_shape for m in out.metas] == [(10, 14), (16, 8)]


def test_preprocessor_pads_training_batches_to_size() -> None:
    """MMSeg's ``data_preprocessor.size=crop_size``: a crop smaller than the window (from an image
    smaller than the crop) trains padded to the full window, ignored; evaluation keeps its size."""
    a, b = make_sample(10, 14, seed=1), make_sample(16, 8, seed=2)
    pre = DataPreprocessor(size=(24, 20), size_divisor=8, seg_pad_val=200)
    out = pre(collate([a, b]), training=True)
    assert out.images.shape == (2, 3, 24, 24)  # (24, 20) then the size divisor
    assert (out.images[0, :, 10:, :] == 0).all() and (out.semantic[0, 10:, :] == 200).all()
    assert (out.semantic[1, 16:, :] == 200).all() and (out.semantic[1, :, 8:] == 200).all()
    assert all(m.pad_shape == (24, 24) for m in out.metas)
    assert pre(collate([a, b]), training=False).images.shape == (2, 3, 16, 16)
    big = make_sample(32, 40, seed=3)  # larger than size: only the divisor pads
    assert pre(collate([big]), training=True).images.shape == (1, 3, 32, 40)
    with pytest.raises(ModelError, match="data_preprocessor.size"):
        DataPreprocessor(size=(0, 8))


def test_preprocessor_bgr_flag_and_bad_std() -> None:
    s = make_sample(4, 4, n=1)
    pre = DataPreprocessor(mean=(0, 0, 0), std=(1, 1, 1), bgr_to_rgb=True)
    out = pre(collate([s]))
    torch.testing.assert_close(out.images[0], s.image.flip(0).float())
    with pytest.raises(ModelError, match="std"):
        DataPreprocessor(std=(1.0, 0.0, 1.0))


def _take(sampler: InfiniteSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_infinite_sampler_deterministic_and_reshuffles() -> None:
    a = _take(InfiniteSampler(7, shuffle=True, seed=3), 21)
    assert a == _take(InfiniteSampler(7, shuffle=True, seed=3), 21)
    assert a != _take(InfiniteSampler(7, shuffle=True, seed=4), 21)
    epochs = [a[i : i + 7] for i in (0, 7, 14)]
    assert all(sorted(e) == list(range(7)) for e in epochs)  # each epoch is a permutation
    assert epochs[0] != epochs[1]  # epochs reshuffle
    assert _take(InfiniteSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


def test_infinite_sampler_resume_skips_exactly() -> None:
    full = _take(InfiniteSampler(9, seed=1, batch_size=2), 30)
    resumed = _take(InfiniteSampler(9, seed=1, batch_size=2, start_iter=5), 20)
    assert resumed == full[10:30]


def test_infinite_sampler_ranks_disjoint_and_cover() -> None:
    r0 = _take(InfiniteSampler(8, seed=2, rank=0, world_size=2), 4)
    r1 = _take(InfiniteSampler(8, seed=2, rank=1, world_size=2), 4)
    assert not set(r0) & set(r1)
    assert sorted(r0 + r1) == list(range(8))
    with pytest.raises(DataError, match="rank"):
        InfiniteSampler(8, rank=2, world_size=2)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.samples = [make_sample(6, 6, n=1, seed=i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


def test_build_dataloader_infinite_resume_and_finite() -> None:
    ds = _ListDataset(5)
    it = iter(build_dataloader(ds, batch_size=2, shuffle=True, seed=0, infinite=True, distributed=False))
    ids = [[m.image_id for m in next(it).metas] for _ in range(4)]
    it2 = iter(build_dataloader(ds, batch_size=2, seed=0, infinite=True, start_iter=2, distributed=False))
    assert [[m.image_id for m in next(it2).metas] for _ in range(2)] == ids[2:]
    finite = list(build_dataloader(ds, batch_size=2, shuffle=False, drop_last=True, distributed=False))
    assert [[m.image_id for m in b.metas] for b in finite] == [[0, 1], [2, 3]]
    with pytest.raises(DataError, match="empty"):
        build_dataloader(_ListDataset(0), batch_size=2)


class _AugmentedDataset(_ListDataset):
    """Each item's pixels come from a draw of torch's global RNG, as a random transform's would."""

    def __getitem__(self, i: int):
        return make_sample(6, 6, n=1, seed=int(torch.randint(0, 2**31, ()).item()))


def _images(loader, n: int) -> list[torch.Tensor]:
    it = iter(loader)
    return [next(it).images for _ in range(n)]


def test_infinite_loader_augmentation_follows_the_position_not_the_worker() -> None:
    ds = _AugmentedDataset(5)
    common = dict(batch_size=2, seed=4, infinite=True, distributed=False)
    before = torch.get_rng_state()
    full = _images(build_dataloader(ds, num_workers=0, **common), 5)
    assert torch.equal(
        torch.get_rng_state(), before
    )  # the main process's RNG (dropout, checkpoint) untouched
    resumed = _images(build_dataloader(ds, num_workers=1, start_iter=2, **common), 3)
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:]))
    assert not torch.equal(full[0], full[1])
    other_seed = _images(build_dataloader(ds, num_workers=0, **{**common, "seed": 5}), 1)
    assert not torch.equal(other_seed[0], full[0])


def test_shard_sampler_covers_each_index_once_across_ranks() -> None:
    from masklab.data.samplers import ShardSampler

    shards = [list(ShardSampler(7, rank=r, world_size=3)) for r in range(3)]
    flat = sorted(i for shard in shards for i in shard)
    assert flat == list(range(7))  # no repeats, nothing missing (DistributedSampler would pad to 9)
    assert shards[0] == [0, 3, 6]
