"""Box-fill vs OpenCV GrabCut vs masklab MAL on the synthetic shapes' val boxes (one run).

Run: ``nice -n 19 .venv/bin/python benchmarks/mal_vs_baselines.py [--config CFG] [--data DIR]
[--epochs N] [--work-dir W] [KEY=VALUE ...]`` (trailing dotted overrides apply to training and labeling).

MAL trains on the train split's **boxes only** (``--config``, default
``configs/mal/mal_tiny-s8_synthetic-128.yaml``), then labels every val box with the student (the
MAL row) and with the EMA teacher (``MAL (teacher)``, from the same checkpoint); GrabCut is
initialised from the box (GC_INIT_WITH_RECT, 5 iterations) on a crop of the box plus 25 % per side
(at least 8 px), as in the reference measurement; box-fill is the box itself. All three are scored by mask IoU against the val GT masks (visible parts), overall
and per shape, with seconds per box (labeling only, MAL training time reported separately).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

CONFIG = "configs/mal/mal_tiny-s8_synthetic-128.yaml"


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


def train_mal(
    config: str, data: Path, work_dir: Path, epochs: int, overrides: list[str]
) -> tuple[Path, float, float, int]:
    from masklab.config.assemble import build_trainer, resolve

    rc = resolve(
        config,
        [
            f"dataset.train_ann_path={data}/annotations/train.json",
            f"dataset.train_img_dir={data}/images/train",
            "dataset.val_ann_path=null",
            "dataset.val_img_dir=null",
            f"train.num_epochs={epochs}",
            f"train.checkpoint_interval={epochs}",
            *overrides,
        ],
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer = build_trainer(rc, work_dir=work_dir, progress=False)
    trainer.train()
    cpu = time.process_time() - cpu
    ckpt = work_dir / "checkpoints" / (work_dir / "checkpoints" / "latest").read_text().strip()
    return ckpt, time.perf_counter() - start, cpu, int(trainer.max_iters)


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
    ap.add_argument("--epochs", type=int, default=70)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: a shared machine makes multi-thread ops wait on descheduled threads)",
    )
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved labeling-time rounds")
    ap.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides of the MAL config")
    args = ap.parse_args()
    load0 = os.getloadavg()
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work_dir)
    if not (data / "synth.json").is_file():
        synthesize(data, num_train=150, num_val=30, seed=0)
    ckpt, train_s, train_cpu, iters = train_mal(args.config, data, work, args.epochs, args.overrides)
    load1 = os.getloadavg()
    gt = load_coco(data / "annotations/val.json")
    images = gt.image_by_id()
    names = {c.id: c.name for c in gt.categories}
    rgbs = {
        i: np.asarray(Image.open(data / "images/val" / img.file_name).convert("RGB"))
        for i, img in images.items()
    }
    # Labeling times: MAL (whole label_boxes call: model build, checkpoint load, crops, forward,
    # paste-back) and GrabCut over all val boxes, interleaved for --rounds rounds so that both see
    # the same share of the shared machine; the median round is reported.
    times: dict[str, list[float]] = {}
    labeled: dict[str, dict[int, np.ndarray]] = {}
    grab: dict[int, np.ndarray] = {}
    for _ in range(args.rounds):
        for method, net in (("MAL", "false"), ("MAL (teacher)", "true")):
            rc = resolve(args.config, [*args.overrides, f"evaluate.use_teacher_test={net}"])
            start = time.perf_counter()
            _, labeled[method] = label_boxes(
                rc, ckpt, data / "annotations/val.json", data / "images/val", device="cpu"
            )
            times.setdefault(method, []).append(time.perf_counter() - start)
        start = time.perf_counter()
        grab = {ann.id: grabcut(rgbs[ann.image_id], list(ann.bbox)) for ann in gt.annotations}
        times.setdefault("GrabCut", []).append(time.perf_counter() - start)
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in ("box-fill", "GrabCut", *labeled)}
    for ann in gt.annotations:
        target = ann_to_mask(ann, images[ann.image_id]).astype(bool)
        for method, pred in (
            ("box-fill", box_fill(target.shape, list(ann.bbox))),
            ("GrabCut", grab[ann.id]),
            *((m, masks[ann.id]) for m, masks in labeled.items()),
        ):
            scores[method].setdefault(names[ann.category_id], []).append(iou(pred, target))
    n = len(gt.annotations)
    shapes = sorted({s for per in scores.values() for s in per})
    print("command: nice -n 19 .venv/bin/python " + shlex.join(sys.argv))
    print(
        f"{n} val boxes; MAL training {train_s:.0f} s wall ({args.epochs} epochs, {iters} iterations, "
        f"{train_s / iters:.2f} s/iter, {train_cpu / 60:.1f} CPU-minutes); load average (1/5/15 min) before training "
        f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}, "
        f"at the end {os.getloadavg()[0]:.2f}"
    )
    print("| method | mIoU | " + " | ".join(shapes) + " | s/box |")
    print("|---|---|" + "---|" * len(shapes) + "---|")
    secs = {"box-fill": 0.0, **{m: float(np.median(t)) / n for m, t in times.items()}}
    for method, per in scores.items():
        allv = [v for vs in per.values() for v in vs]
        cells = " | ".join(f"{np.mean(per[s]):.3f}" for s in shapes)
        print(f"| {method} | {np.mean(allv):.3f} | {cells} | {secs[method]:.4f} |")


if __name__ == "__main__":
    main()
