"""MIL projection loss, dice and the CRF target."""

from __future__ import annotations

import pytest
import torch

from masklab.models.mal.crf import color_affinities, mean_field_target, refine_probs
from masklab.models.mal.losses import dice_loss, mil_projection_loss
from masklab.structures.box_crops import rasterize_boxes


def _box(h: int = 16, w: int = 16, box: tuple[float, float, float, float] = (4, 3, 11, 13)) -> torch.Tensor:
    return rasterize_boxes(torch.tensor([box]), h, w)


def test_mil_loss_zero_for_box_tight_prediction_even_if_not_box_shaped() -> None:
    box = _box()
    # A diagonal line spanning the box touches every box row and column: perfectly tight.
    pred = torch.zeros(1, 16, 16)
    for i in range(10):
        pred[0, 3 + i, 4 + min(i, 6)] = 1.0
    assert pred[0].amax(0).gt(0).equal(box[0].any(0)) and pred[0].amax(1).gt(0).equal(box[0].any(1))
    assert mil_projection_loss(pred, box).item() < 1e-3
    assert mil_projection_loss(box.float(), box).item() < 1e-3


def test_mil_loss_positive_when_context_columns_fire() -> None:
    box = _box()
    pred = box.float().clone()
    pred[0, 5:8, 0:3] = 1.0  # context columns left of the box
    loss = mil_projection_loss(pred, box).item()
    assert loss > 0.05
    pred_rows = box.float().clone()
    pred_rows[0, 14:16, 6] = 1.0  # context rows below the box
    assert mil_projection_loss(pred_rows, box).item() > 0.0


def test_mil_loss_positive_when_box_rows_are_missed() -> None:
    box = _box()
    pred = box.float().clone()
    pred[0, 3:8] = 0.0  # the top half of the box predicts nothing
    assert mil_projection_loss(pred, box).item() > 0.1


def test_dice_loss_bounds() -> None:
    t = torch.zeros(2, 8, 8)
    t[:, 2:5, 2:5] = 1
    assert dice_loss(t, t).max().item() < 1e-3
    assert dice_loss(1 - t, t).min().item() > 0.99


def test_crf_target_never_leaves_the_box() -> None:
    torch.manual_seed(0)
    h = w = 24
    box = _box(h, w, (5, 6, 17, 20))
    # Uniform colour everywhere (strong affinities) and confident foreground everywhere, even outside.
    images = torch.zeros(1, 3, h, w)
    start = torch.full((1, h, w), 0.95)
    aff = color_affinities(images, 3, 0.1)
    target = mean_field_target(start, aff, box, kernel_size=3, num_iter=30)
    assert target.any()
    assert not (target & ~box).any()


def test_crf_follows_colour_edges_inside_the_box() -> None:
    h = w = 20
    box = _box(h, w, (2, 2, 18, 18))
    images = torch.zeros(1, 3, h, w)
    images[:, :, 6:14, 6:14] = 3.0  # a bright square object inside a dark box
    start = torch.full((1, h, w), 0.5)
    start[0, 6:14, 6:14] = 0.8  # the square is slightly more foreground to begin with
    start[0, 2:6, 2:18] = 0.45
    target = mean_field_target(start, color_affinities(images, 3, 0.1), box, kernel_size=3, num_iter=50)[0]
    square = torch.zeros(h, w, dtype=torch.bool)
    square[6:14, 6:14] = True
    assert target[square].float().mean().item() > 0.9
    # The dark ring between square and box edge started undecided and is cut off by the colour edge.
    assert target[box[0] & ~square].float().mean().item() < 0.2


def test_colour_affinities_zero_for_out_of_image_neighbours() -> None:
    aff = color_affinities(torch.zeros(1, 3, 4, 4), 3, 0.1)
    # Pixel 0 (top-left corner) has 4 valid neighbours (itself included) in a 3x3 window.
    assert aff[0, :, 0].sum().item() == 4.0
    assert aff[0, :, 5].sum().item() == 9.0


def _two_label_mean_field(start, aff, box, num_iter, low=0.1, high=0.9):  # noqa: ANN001, ANN202
    """The reference's literal update over {bg, fg}: weighted sums of -log q, exp, zero fg outside, renormalise, clamp."""
    b, h, w = start.shape
    boxf = box.float()
    fg = (start * boxf).clamp(low, high)
    for _ in range(num_iter):
        q = torch.stack([1 - fg, fg], dim=1)  # (B, 2, H, W)
        nlog = torch.nn.functional.unfold(-torch.log(q), 3, padding=1).view(b, 2, 9, h * w)
        energy = (nlog * aff[:, None]).sum(dim=2)  # (B, 2, H*W)
        un = torch.exp(-energy).view(b, 2, h, w)
        un[:, 1] = un[:, 1] * boxf
        fg = (un[:, 1] / un.sum(dim=1)).clamp(low, high)
    return (fg > 0.5) & box


def test_crf_matches_the_literal_two_label_update() -> None:
    gen = torch.Generator().manual_seed(1)
    h = w = 20
    images = torch.rand(2, 3, h, w, generator=gen) * 0.3
    start = torch.rand(2, h, w, generator=gen)
    box = _box(h, w, (3, 2, 17, 16)).expand(2, h, w)
    aff = color_affinities(images, 3, 0.1)
    fast = mean_field_target(start, aff, box, kernel_size=3, num_iter=15)
    slow = _two_label_mean_field(start, aff, box, 15)
    assert fast.equal(slow)


@pytest.mark.parametrize(("k", "dilation"), [(1, 1), (3, 1), (5, 1), (7, 1), (3, 2), (5, 3), (5, 4)])
def test_colour_affinities_equal_the_unfold_formula(k: int, dilation: int) -> None:
    """Every tap of every pixel (mirrored taps share one difference map), borders included, also
    with dilated taps (5 taps at dilation 4 on a 9-row image: some taps fall outside entirely)."""
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 9, 13, generator=gen)
    zeta = 0.7
    pad = k // 2 * dilation
    neigh = torch.nn.functional.unfold(images, k, dilation=dilation, padding=pad).view(2, 3, k * k, 9 * 13)
    dist2 = (neigh - images.reshape(2, 3, 1, 9 * 13)).pow(2).sum(1)
    valid = torch.nn.functional.unfold(torch.ones(1, 1, 9, 13), k, dilation=dilation, padding=pad)
    expected = torch.exp(-dist2 / (2 * zeta * zeta)) * valid
    assert torch.allclose(color_affinities(images, k, zeta, dilation), expected, atol=1e-6)
    # A channels_last input gives the same weights.
    assert torch.allclose(
        color_affinities(images.contiguous(memory_format=torch.channels_last), k, zeta, dilation),
        expected,
        atol=1e-6,
    )


def test_refine_probs_snaps_a_blurred_mask_to_the_colour_edge() -> None:
    # An 8x8 probability map whose edge is a soft ramp, on a 16x16 crop whose colour edge is sharp
    # at column 9 (left: object, right: background).
    images = torch.zeros(1, 3, 16, 16)
    images[:, :, :, :9] = 2.0
    probs = torch.linspace(0.9, 0.1, 8).expand(1, 8, 8).clone()
    out = refine_probs(probs, images, scale=2, kernel_size=5, zeta=0.5, num_iter=2)
    assert out.shape == (1, 16, 16)
    # Thresholded at 0.5 the mask ends exactly at the colour edge on every row.
    fg = out[0] > 0.5
    assert fg[:, :9].all() and not fg[:, 9:].any()
    # The plain upsampled ramp does not: its 0.5 crossing sits mid-map, away from column 9.
    plain = refine_probs(probs, images, scale=2, num_iter=0)[0] > 0.5
    assert not plain.equal(fg)
    assert torch.allclose(refine_probs(probs, images, scale=1, num_iter=0), probs), (
        "scale 1 and no iterations leave the map unchanged"
    )
