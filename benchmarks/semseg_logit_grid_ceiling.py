"""How much val mIoU a decode head's logit grid allows on the synthetic shapes (issue #4 analysis).

Run: ``.venv/bin/python benchmarks/semseg_logit_grid_ceiling.py [--data DIR] [--steps 300]``

A head at output stride s predicts (H/s, W/s) logits that are bilinearly upsampled to the label size.
For strides 4, 8 and 16 this prints two ceilings of the val mIoU, computed on the ground truth itself:

* ``soft``: the one-hot labels average-pooled to the grid (the class shares of each cell, what a
  well-calibrated model outputs), upsampled like the model's logits, then argmax;
* ``optimised``: logits fitted per image to the labels by Adam on the upsampled cross-entropy (the
  best any model could do through that grid, up to the fit's convergence).

On the 128 px shapes a stride-8 head (FCN, PSPNet, DeepLabV3 in their "-D8" setting) has a 16x16 grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from masklab.evaluation.semantic import AreaStats, area_to_metrics, intersect_and_union


def mean_iou(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> float:
    """Val mIoU of (N, H, W) predictions, accumulated over images as masklab's ``IoUMetric`` does."""
    stats = AreaStats.zeros(num_classes)
    for p, g in zip(pred, gt):
        stats += intersect_and_union(p, g, num_classes, ignore_index=255)
    return float(np.nanmean(area_to_metrics(stats, ["mIoU"])["IoU"].numpy()))


def ceilings(labels: torch.Tensor, num_classes: int, stride: int, steps: int) -> tuple[float, float]:
    """(soft, optimised) mIoU ceilings of a stride-``stride`` logit grid for (N, H, W) labels."""
    size = labels.shape[-2:]
    grid = (size[0] // stride, size[1] // stride)
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
    shares = F.adaptive_avg_pool2d(onehot, grid)
    soft = F.interpolate(shares, size=size, mode="bilinear", align_corners=False).argmax(1)
    logits = (shares * 4).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(up, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    best = F.interpolate(logits.detach(), size=size, mode="bilinear", align_corners=False).argmax(1)
    return mean_iou(soft, labels, num_classes), mean_iou(best, labels, num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/semseg_quality/data"))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (args.data / "meta.json").exists():
        from masklab.data.synthetic import synthesize

        print(synthesize(args.data, num_train=2000, num_val=60, size=128, seed=0))
    import json

    classes = json.loads((args.data / "meta.json").read_text())["classes"]
    files = sorted((args.data / "labels" / "val").glob("*.png"))
    labels = torch.stack([torch.from_numpy(np.array(Image.open(f)).astype(np.int64)) for f in files])
    print(f"{len(files)} val label maps of {tuple(labels.shape[-2:])}, {len(classes)} classes")
    print("| output stride | logit grid | soft ceiling | optimised ceiling |")
    print("|---|---|---|---|")
    for stride in (4, 8, 16):
        soft, best = ceilings(labels, len(classes), stride, args.steps)
        grid = f"{labels.shape[-2] // stride}x{labels.shape[-1] // stride}"
        print(f"| {stride} | {grid} | {soft:.3f} | {best:.3f} |")


if __name__ == "__main__":
    main()
