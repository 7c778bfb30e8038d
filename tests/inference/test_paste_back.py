"""Crop -> paste-back round trips, including boxes touching every image border."""

from __future__ import annotations

import pytest
import torch

from masklab.data.datasets.box_crops import crop_image, labeling_margins, make_box_crop
from masklab.errors import ConfigError
from masklab.inference.paste_back import paste_crop_probs, paste_masks, size_bucket, threshold_for_area
from masklab.structures.box_crops import CropWindow, rasterize_boxes

H, W = 40, 56


def _disk(cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _as_image(mask: torch.Tensor) -> torch.Tensor:
    return (mask.to(torch.uint8) * 255)[None].expand(3, -1, -1).contiguous()


@pytest.mark.parametrize("flipped", [False, True])
def test_exact_round_trip_without_resize_clips_at_borders(flipped: bool) -> None:
    mask = _disk(5, 6, 9)  # a disk cut by the top and left borders
    window = CropWindow(x0=-7, y0=-5, width=24, height=24, crop_size=24, image_size=(H, W), flipped=flipped)
    box = torch.tensor([0.0, 0.0, 15.0, 14.0])
    crop = crop_image(_as_image(mask), window)[0].float() / 255
    pasted = paste_crop_probs(crop, window, box)
    expected = mask & rasterize_boxes(box[None], H, W)[0]
    assert pasted.gt(0.5).equal(expected)


@pytest.mark.parametrize(
    "box",
    [
        (0.0, 10.0, 20.0, 30.0),  # touches the left border
        (36.0, 8.0, 56.0, 28.0),  # right
        (15.0, 0.0, 40.0, 18.0),  # top
        (12.0, 22.0, 42.0, 40.0),  # bottom
        (0.0, 0.0, 56.0, 40.0),  # the whole image
    ],
)
def test_round_trip_with_resize_at_each_border(box: tuple[float, float, float, float]) -> None:
    x1, y1, x2, y2 = box
    mask = _disk((y1 + y2) / 2, (x1 + x2) / 2, min(x2 - x1, y2 - y1) / 2)
    crop = make_box_crop(_as_image(mask), torch.tensor(box), labeling_margins((0.6, 0.6)), 32)
    assert (
        crop.window.x0 < 0
        or crop.window.y0 < 0
        or crop.window.x0 + crop.window.width > W
        or crop.window.y0 + crop.window.height > H
    )
    probs = crop.image[0].float() / 255
    masks, pasted = paste_masks(probs[None], [crop.window], crop.image_box[None], (0.5,))
    assert pasted.shape == (1, H, W)
    inter = (masks[0] & mask).sum().item()
    union = (masks[0] | mask).sum().item()
    assert inter / union > 0.85
    assert not (masks[0] & ~rasterize_boxes(crop.image_box[None], H, W)[0]).any()


def test_thresholds_per_size_bucket() -> None:
    assert [size_bucket(a) for a in (10.0, 32.0**2, 5000.0, 96.0**2)] == [0, 1, 1, 2]
    assert threshold_for_area((0.3,), 1e6) == 0.3
    assert threshold_for_area((0.2, 0.4, 0.6), 100.0) == 0.2
    assert threshold_for_area((0.2, 0.4, 0.6), 1e5) == 0.6
    with pytest.raises(ConfigError, match="mask_thres"):
        threshold_for_area((0.1, 0.2), 10.0)


def test_paste_masks_uses_the_bucket_threshold() -> None:
    window = CropWindow(0, 0, 8, 8, 8, (8, 8))
    probs = torch.full((1, 8, 8), 0.5)
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # area 64: small
    assert paste_masks(probs, [window], box, (0.4, 0.9, 0.9))[0].all()
    assert not paste_masks(probs, [window], box, (0.6, 0.1, 0.1))[0].any()
