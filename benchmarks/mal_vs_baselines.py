"""Box-fill vs OpenCV GrabCut vs masklab MAL on the synthetic shapes' val boxes (one run).

Run: ``.venv/bin/python benchmarks/mal_vs_baselines.py [--data DIR] [--epochs N] [--work-dir W]``

MAL trains on the train split's **boxes only** (``configs/mal/mal_tiny_synthetic-64.yaml``), then
labels every val box; GrabCut is initialised from the box (GC_INIT_WITH_RECT, 5 iterations) on a
crop of the box plus 25 % per side (at least 8 px), as in the reference measurement; box-fill is
the box itself. All three are scored by mask IoU against the val GT masks (visible parts), overall
and per shape, with seconds per box (labeling only, MAL training time reported separately).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CONFIG = "configs/mal/mal_tiny_synthetic-64.yaml"


def box_fill(shape: tuple[int, int], bbox: list[float]) -> np.ndarray:
    x, y, w, h = bbox
    m = np.zeros(shape, bool)
    m[int(round(y)) : int(round(y + h)), int(round(x)) : int(round(x + w))] = True
    return m


def grabcut(image: np.ndarray, bbox: list[float], iterations: int = 5, context: float = 0.25) -> np.ndarray:
    """GrabCut from the box on a crop around it; degenerate boxes fall back to box-fill."""
    import cv2

    H, W = image.shape[:2]
    x, y, w, h = bbox
    if w < 2 or h < 2:
        return box_fill((H, W), bbox)
    px, py = max(8, int(context * w)), max(8, int(context * h))
    x0, y0 = max(0, int(x) - px), max(0, int(y) - py)
    x1, y1 = min(W, int(np.ceil(x + w)) + px), min(H, int(np.ceil(y + h)) + py)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1, ::-1])
    mask = np.zeros(crop.shape[:2], np.uint8)
    rect = (int(x) - x0, int(y) - y0, max(1, int(round(w))), max(1, int(round(h))))
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return box_fill((H, W), bbox)
    out = np.zeros((H, W), bool)
    out[y0:y1, x0:x1] = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def train_mal(data: Path, work_dir: Path, epochs: int) -> tuple[Path, float]:
    from masklab.config.assemble import build_trainer, resolve

    rc = resolve(
        CONFIG,
        [
            f"dataset.train_ann_path={data}/annotations/train.json",
            f"dataset.train_img_dir={data}/images/train",
            "dataset.val_ann_path=null",
            "dataset.val_img_dir=null",
            f"train.num_epochs={epochs}",
            f"train.checkpoint_interval={epochs}",
        ],
    )
    start = time.perf_counter()
    trainer = build_trainer(rc, work_dir=work_dir, progress=False)
    trainer.train()
    return work_dir / "checkpoints" / (
        work_dir / "checkpoints" / "latest"
    ).read_text().strip(), time.perf_counter() - start


def main() -> None:
    import torch
    from PIL import Image

    from masklab.cli.infer_boxes import label_boxes
    from masklab.config.assemble import resolve
    from masklab.data.coco.load import load_coco
    from masklab.data.coco.rle import ann_to_mask
    from masklab.data.synthetic import synthesize

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/mal_bench_data")
    ap.add_argument("--work-dir", default="/tmp/mal_bench_work")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work_dir)
    if not (data / "synth.json").is_file():
        synthesize(data, num_train=150, num_val=30, seed=0)
    ckpt, train_s = train_mal(data, work, args.epochs)
    gt = load_coco(data / "annotations/val.json")
    images = gt.image_by_id()
    names = {c.id: c.name for c in gt.categories}
    rc = resolve(CONFIG)
    start = time.perf_counter()
    _, mal_masks = label_boxes(rc, ckpt, data / "annotations/val.json", data / "images/val", device="cpu")
    mal_s = time.perf_counter() - start
    scores: dict[str, dict[str, list[float]]] = {"box-fill": {}, "GrabCut": {}, "MAL": {}}
    grab_s = 0.0
    for ann in gt.annotations:
        img = images[ann.image_id]
        target = ann_to_mask(ann, img).astype(bool)
        rgb = np.asarray(Image.open(data / "images/val" / img.file_name).convert("RGB"))
        t0 = time.perf_counter()
        gc = grabcut(rgb, list(ann.bbox))
        grab_s += time.perf_counter() - t0
        for method, pred in (
            ("box-fill", box_fill(target.shape, list(ann.bbox))),
            ("GrabCut", gc),
            ("MAL", mal_masks[ann.id]),
        ):
            scores[method].setdefault(names[ann.category_id], []).append(iou(pred, target))
    n = len(gt.annotations)
    shapes = sorted({s for per in scores.values() for s in per})
    print(f"{n} val boxes; MAL training {train_s:.0f} s wall ({args.epochs} epochs)")
    print("| method | mIoU | " + " | ".join(shapes) + " | s/box |")
    print("|---|---|" + "---|" * len(shapes) + "---|")
    secs = {"box-fill": 0.0, "GrabCut": grab_s / n, "MAL": mal_s / n}
    for method, per in scores.items():
        allv = [v for vs in per.values() for v in vs]
        cells = " | ".join(f"{np.mean(per[s]):.3f}" for s in shapes)
        print(f"| {method} | {np.mean(allv):.3f} | {cells} | {secs[method]:.4f} |")


if __name__ == "__main__":
    main()
