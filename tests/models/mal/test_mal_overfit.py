"""A short MAL training on drawn circles and rings learns masks that are not the box."""

from __future__ import annotations

import pytest
import torch

from masklab.data.datasets.box_crops import (
    collate_box_crops,
    labeling_margins,
    make_box_crop,
    sample_train_margins,
)
from masklab.models.mal import MALModel, MalTinyEncoder
from masklab.structures.instances import masks_to_boxes

SIDE = 72


def _scene(seed: int, ring: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat-coloured disk or ring (with pixel noise) on a contrasting flat background."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIDE) + 0.5, torch.arange(SIDE) + 0.5, indexing="ij")
    cy, cx = (torch.rand(2, generator=gen) * 30 + 21).tolist()
    r = float(torch.rand(1, generator=gen) * 6 + 12)
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    mask = (dist <= r) & (dist >= 0.55 * r) if ring else dist <= r
    bg = torch.rand(3, generator=gen) * 255
    fg = torch.rand(3, generator=gen) * 255
    while (bg - fg).abs().sum() < 200:
        fg = torch.rand(3, generator=gen) * 255
    image = (
        torch.where(mask[None], fg[:, None, None], bg[:, None, None])
        + torch.randn(3, SIDE, SIDE, generator=gen) * 4
    )
    return image.clamp(0, 255).to(torch.uint8), mask


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


@pytest.mark.slow
def test_short_training_gives_masks_that_are_not_box_shaped() -> None:
    torch.manual_seed(0)
    scenes = [_scene(i, ring=i % 2 == 1) for i in range(8)]
    boxes = [masks_to_boxes(m[None])[0] for _, m in scenes]
    model = MALModel(
        MalTinyEncoder(32, 3),
        mask_head_hidden_channel=32,
        mask_head_out_channel=32,
        teacher_momentum=0.9,
        loss_mil_step=20,
        loss_crf_step=30,
        crf_num_iter=10,
        mask_thres=(0.5,),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    # lr 2e-3 / 400 steps (session 10): lr 5e-3 / 300 steps learned the shapes on seed 0 with one torch
    # thread only; with two threads (other float rounding) it collapsed (mean IoU 0.18), and on seeds 2 / 3
    # it stayed at box-fill. This setting passes seeds 0-2 on one and two threads.
    for _ in range(400):
        crops = [
            make_box_crop(
                img,
                box,
                sample_train_margins((0.0, 1.2), gen),
                64,
                flip=bool(torch.rand((), generator=gen) < 0.5),
            )
            for (img, _), box in zip(scenes, boxes, strict=True)
        ]
        out = model(model.data_preprocessor(collate_box_crops(crops), training=True), mode="loss")
        opt.zero_grad()
        (out["loss_mil"] + out["loss_crf"]).backward()
        opt.step()

    model.eval()
    crops = [
        make_box_crop(img, box, labeling_margins((0.6, 0.6)), 64, image_id=i, ann_id=i)
        for i, ((img, _), box) in enumerate(zip(scenes, boxes, strict=True))
    ]
    preds = model(model.data_preprocessor(collate_box_crops(crops)), mode="predict")
    pred_gt, box_gt, pred_box = [], [], []
    for pred, (_, gt), box in zip(preds, scenes, boxes, strict=True):
        box_mask = torch.zeros_like(gt)
        x1, y1, x2, y2 = (int(v) for v in box)
        box_mask[y1:y2, x1:x2] = True
        pred_gt.append(_iou(pred.masks[0], gt))
        box_gt.append(_iou(box_mask, gt))
        pred_box.append(_iou(pred.masks[0], box_mask))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    # Box-fill is the degenerate answer of tightness-only supervision; MAL must beat it and differ from it.
    assert mean(pred_gt) > mean(box_gt) + 0.03, (pred_gt, box_gt)
    assert mean(pred_box) < 0.95, pred_box
