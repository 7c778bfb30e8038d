from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from masklab.config.registries import TRANSFORMS
from masklab.data.transforms import (
    Compose,
    LargeScaleJitter,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    RandomRotate90,
    Resize,
)
from masklab.data.transforms.crop_pad import _rot90_op
from masklab.errors import ConfigError
from masklab.structures import Instances, Sample, SampleMeta
from masklab.structures.instances import masks_to_boxes

from .helpers import make_sample

RED = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)


def _planted(h: int, w: int, seed: int) -> Sample:
    """A random sample whose instance pixels are pure red and nothing else is (so movement can be checked)."""
    s = make_sample(h, w, n=3, seed=seed)
    image = s.image.clone()
    image[0] = image[0].clamp(max=100)  # no red pixels in the background
    fg = s.instances.masks.any(0)
    image[:, fg] = RED.view(3, 1)
    return Sample(image=image, meta=s.meta, semantic=s.semantic, instances=s.instances)


def _check_invariants(out: Sample) -> None:
    inst = out.instances
    h, w = out.image.shape[-2:]
    assert out.meta.img_shape == (h, w)
    assert out.semantic.shape == (h, w) and inst.masks.shape[-2:] == (h, w) or len(inst) == 0
    if len(inst) == 0:
        return
    assert inst.masks.flatten(1).any(1).all(), "empty instances must be dropped"
    torch.testing.assert_close(inst.boxes, masks_to_boxes(inst.masks))
    for i in range(len(inst)):
        assert (out.semantic[inst.masks[i]] == inst.labels[i]).all(), "instance pixel must carry its class"
    # image moved with the masks: pixels under a mask stay red (nearest vs bilinear may blur edges,
    # so compare at pixels whose 3x3 neighbourhood is all foreground)
    fg = inst.masks.any(0).float()[None, None]
    core = torch.nn.functional.avg_pool2d(fg, 3, 1, 1)[0, 0] > 0.999
    if core.any():
        px = out.image[:, core].int()
        # bilinear/antialiased resizing mixes in a little background at most
        assert (px[0] >= 180).all() and (px[1:] <= 80).all()


GEOMETRIC = [
    lambda: Resize(scale=(37, 23), keep_ratio=False),
    lambda: Resize(scale=(40, 30), keep_ratio=True),
    lambda: RandomResize(scale=(48, 32), ratio_range=(0.5, 2.0)),
    lambda: RandomCrop(crop_size=(17, 21)),
    lambda: RandomCrop(crop_size=20, cat_max_ratio=0.75),
    lambda: RandomFlip(prob=1.0),
    lambda: RandomFlip(prob=1.0, direction="vertical"),
    lambda: RandomRotate90(prob=1.0),
    lambda: Pad(size_divisor=16),
    lambda: LargeScaleJitter(output_size=(32, 40), min_scale=0.3, max_scale=2.0),
]


@pytest.mark.parametrize("factory", GEOMETRIC)
def test_geometric_invariants_random(factory) -> None:
    torch.manual_seed(0)
    t = factory()
    for seed in range(6):
        h, w = 20 + seed * 3, 44 - seed * 2
        _check_invariants(t(_planted(h, w, seed)))


def test_chained_pipeline_keeps_invariants() -> None:
    torch.manual_seed(1)
    pipe = Compose(
        [
            RandomResize((64, 48), (0.5, 2.0)),
            RandomCrop(24, 0.75),
            RandomFlip(0.5),
            PhotoMetricDistortion(),
            Pad(size=24),
        ]
    )
    for seed in range(8):
        out = pipe(_planted(30, 36, seed))
        assert out.image.shape[-2:] == (24, 24) and out.image.dtype == torch.uint8


def test_flip_moves_square_and_sets_meta() -> None:
    s = make_sample(8, 10, n=1)
    out = RandomFlip(prob=1.0)(s)
    assert torch.equal(out.image, s.image.flip(-1)) and torch.equal(out.semantic, s.semantic.flip(-1))
    assert torch.equal(out.instances.masks, s.instances.masks.flip(-1)) and out.meta.flip
    assert not RandomFlip(prob=1.0)(out).meta.flip


def test_rotate90_turns_everything_exactly() -> None:
    s = make_sample(8, 13, n=2, seed=4)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = RandomRotate90(prob=1.0)(s)
        k = out.meta.extra["rot90"]
        seen.add(k)
        assert torch.equal(out.image, torch.rot90(s.image, k, dims=(-2, -1)))
        assert torch.equal(out.semantic, torch.rot90(s.semantic, k, dims=(-2, -1)))
        assert torch.equal(out.instances.masks, torch.rot90(s.instances.masks, k, dims=(-2, -1)))
        assert out.meta.img_shape == ((13, 8) if k % 2 else (8, 13))
        # the boxes are turned geometrically (not only recomputed): check the op on its own
        boxes = tv_tensors.BoundingBoxes(s.instances.boxes, format="XYXY", canvas_size=(8, 13))
        turned = _rot90_op(k)(boxes)
        torch.testing.assert_close(turned.as_subclass(torch.Tensor), masks_to_boxes(out.instances.masks))
    assert seen == {1, 2, 3}
    torch.manual_seed(0)
    assert RandomRotate90(prob=0.0)(s) is s
    with pytest.raises(ConfigError, match="RandomRotate90.prob"):
        RandomRotate90(prob=2)


def test_resize_is_nearest_for_labels_and_updates_meta() -> None:
    s = make_sample(10, 20, n=2)
    out = Resize(scale=(40, 10), keep_ratio=True)(s)  # factor min(40/20, 10/10) = 1
    assert out.image.shape[-2:] == (10, 20)
    out = Resize(scale=(40, 20), keep_ratio=True)(s)
    assert out.image.shape[-2:] == (20, 40) and out.meta.scale_factor == (2.0, 2.0)
    assert set(out.semantic.unique().tolist()) <= set(s.semantic.unique().tolist())


def test_random_crop_cat_max_ratio() -> None:
    # left 90% of columns is class 1, a thin strip on the right is class 2: most crops are one class
    sem = torch.ones((20, 100), dtype=torch.int64)
    sem[:, 90:] = 2
    s = Sample(
        image=torch.zeros((3, 20, 100), dtype=torch.uint8), meta=SampleMeta(ori_shape=(20, 100)), semantic=sem
    )
    torch.manual_seed(0)
    crop = RandomCrop(crop_size=(20, 20), cat_max_ratio=0.75)
    balanced = 0
    for _ in range(30):
        win = crop(s).semantic
        _, counts = win.unique(return_counts=True)
        balanced += int(len(counts) > 1 and counts.max() / counts.sum() < 0.75)
    unconstrained = RandomCrop(crop_size=(20, 20))
    plain = 0
    for _ in range(30):
        _, counts = unconstrained(s).semantic.unique(return_counts=True)
        plain += int(len(counts) > 1 and counts.max() / counts.sum() < 0.75)
    assert balanced > plain + 10


def test_crop_drops_instances_outside_window() -> None:
    masks = torch.zeros((2, 10, 10), dtype=torch.bool)
    masks[0, :3, :3] = True
    masks[1, 7:, 7:] = True
    inst = Instances(
        masks=masks, boxes=masks_to_boxes(masks), labels=torch.tensor([1, 2]), ids=torch.tensor([5, 6])
    )
    sem = torch.zeros((10, 10), dtype=torch.int64)
    s = Sample(
        image=torch.zeros((3, 10, 10), dtype=torch.uint8), meta=SampleMeta(), semantic=sem, instances=inst
    )
    torch.manual_seed(0)
    for _ in range(10):
        out = RandomCrop(crop_size=5)(s)
        assert len(out.instances) <= 1
        assert torch.equal(out.instances.boxes, masks_to_boxes(out.instances.masks))


def test_pad_values_and_photometric_keeps_geometry() -> None:
    s = make_sample(5, 7, n=1)
    out = Pad(size=(8, 9), pad_val=3, seg_pad_val=250)(s)
    assert (
        out.image.shape[-2:] == (8, 9)
        and (out.image[:, 5:, :] == 3).all()
        and (out.semantic[:, 7:] == 250).all()
    )
    assert out.meta.extra["unpadded_shape"] == (5, 7)
    torch.manual_seed(0)
    p = PhotoMetricDistortion()(s)
    assert (
        torch.equal(p.semantic, s.semantic)
        and p.image.dtype == torch.uint8
        and p.image.shape == s.image.shape
    )
    assert not torch.equal(p.image, s.image)


def test_registered_and_bad_config() -> None:
    for name in (
        "Compose",
        "Resize",
        "RandomResize",
        "RandomCrop",
        "RandomFlip",
        "RandomRotate90",
        "PhotoMetricDistortion",
        "Pad",
        "LargeScaleJitter",
    ):
        assert name in TRANSFORMS._table  # registered by importing the module; no global populate()
    with pytest.raises(ConfigError, match="Pad"):
        Pad()
    with pytest.raises(ConfigError, match="RandomFlip.direction"):
        RandomFlip(direction="diagonal")
    with pytest.raises(ConfigError, match="RandomCrop.crop_size"):
        RandomCrop(crop_size=(1, 2, 3))


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: RandomCrop(crop_size=0), "RandomCrop.crop_size: 0"),
        (lambda: RandomCrop(crop_size=(-4, 8)), "RandomCrop.crop_size"),
        (lambda: Resize(scale=0), "Resize.scale: 0"),
        (lambda: Resize(scale=(0, 10), keep_ratio=False), "Resize.scale"),
        (lambda: RandomResize(scale=-5), "RandomResize.scale"),
        (lambda: LargeScaleJitter(output_size=0), "LargeScaleJitter.output_size"),
        (lambda: Pad(size=-3), "Pad.size: -3"),
        (lambda: Pad(size_divisor=0), "Pad.size_divisor: 0"),
        (lambda: Pad(size_divisor=-2), "Pad.size_divisor"),
    ],
)
def test_non_positive_sizes_are_config_errors(build, key) -> None:
    """A zero or negative size used to crop to an empty image, crash in the resize kernel or
    divide by zero on the first sample; it is a config mistake named when the transform is built."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        build()
    assert "expected a positive int" in str(info.value)
