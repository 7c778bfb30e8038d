"""slide_inference / tta_inference against hand computations."""

from __future__ import annotations

import torch

from masklab.inference.sliding_window import slide_inference, tta_inference, window_grid


def test_window_grid_follows_mmseg_rule() -> None:
    # H=10, crop 4, stride 3: (10 - 4 + 3 - 1) // 3 + 1 = 3 rows; the last one is clamped to end at 10.
    rows = sorted({(y1, y2) for y1, y2, _, _ in window_grid((10, 4), (4, 4), (3, 3))})
    assert rows == [(0, 4), (3, 7), (6, 10)]
    # An image smaller than the crop is one (smaller) window.
    assert window_grid((3, 5), (8, 8), (4, 4)) == [(0, 3, 0, 5)]


def test_two_overlapping_crops_average_logits() -> None:
    images = torch.arange(12, dtype=torch.float32).view(1, 1, 2, 6).expand(1, 3, 2, 6).contiguous()

    def forward_fn(crop: torch.Tensor) -> torch.Tensor:
        # Depends on the whole crop, so overlapping crops disagree.
        return crop[:, :2] + crop.mean()

    out = slide_inference(forward_fn, images, crop_size=(2, 4), stride=(2, 2), num_classes=2)
    left, right = images[:, :2, :, 0:4], images[:, :2, :, 2:6]
    left_out, right_out = left + left.mean(), right + right.mean()
    expected = torch.empty(1, 2, 2, 6)
    expected[..., 0:2] = left_out[..., 0:2]
    expected[..., 2:4] = (left_out[..., 2:4] + right_out[..., 0:2]) / 2
    expected[..., 4:6] = right_out[..., 2:4]
    torch.testing.assert_close(out, expected)


def test_tta_averages_probabilities_over_flips() -> None:
    images = torch.randn(1, 3, 2, 4)
    weights = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)

    def infer_fn(x: torch.Tensor) -> torch.Tensor:
        # Not flip-equivariant (a channel-dependent column ramp), so both views matter.
        col = torch.arange(x.shape[-1], dtype=x.dtype).view(1, 1, 1, -1)
        return x * weights + col * torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)

    out = tta_inference(infer_fn, images, scales=(1.0,), flip=True)
    a = infer_fn(images).softmax(1)
    b = infer_fn(images.flip(-1)).flip(-1).softmax(1)
    torch.testing.assert_close(out, (a + b) / 2)
    assert not torch.allclose(out, ((infer_fn(images) + infer_fn(images.flip(-1)).flip(-1)) / 2).softmax(1))
