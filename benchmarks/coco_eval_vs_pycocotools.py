"""COCO AP: masklab vs pycocotools vs faster-coco-eval, in one process, on the same JSON files.

Each side reads the ground-truth and results files, evaluates, accumulates and summarises (the
whole `evaluate coco` path). The sides run interleaved, ``--repeats`` rounds in rotating order,
and each keeps its best time, so load on a shared machine hits all of them alike. Prints each
time, the ratios and the largest difference of the 12 stats against pycocotools.

    .venv/bin/python benchmarks/coco_eval_vs_pycocotools.py [--images 500 --gt 20 --dets 100 --iou-type segm --repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _pycocotools(gt_path: Path, dt_path: Path, iou_type: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(dt_path)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def _faster(gt_path: Path, dt_path: Path, iou_type: str) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval_faster(gt, gt.loadRes(str(dt_path)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def _masklab(gt_path: Path, dt_path: Path, iou_type: str) -> np.ndarray:
    from masklab.data.coco import load_coco
    from masklab.data.coco.results import load_coco_results
    from masklab.evaluation.coco import CocoEvalParams, evaluate_ap

    gt = load_coco(gt_path)
    result = evaluate_ap(gt, load_coco_results(dt_path, gt), CocoEvalParams(iou_type=iou_type))
    return np.array(list(result.stats.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--gt", type=int, default=20, help="ground-truth objects per image")
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time counts")
    args = parser.parse_args()

    from masklab.evaluation.coco.synthetic_case import random_coco_case

    gt, dets = random_coco_case(
        args.seed,
        num_images=args.images,
        max_gt=args.gt,
        max_dets=args.dets,
        size=(96, 320),
        exact_counts=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = Path(tmp) / "gt.json", Path(tmp) / "dt.json"
        gt_path.write_text(json.dumps(gt))
        dt_path.write_text(json.dumps(dets))
        print(
            f"case: {args.images} images, {len(gt['annotations'])} GT, {len(dets)} detections, {args.iou_type}"
        )
        # Warm-up on a small case so no side pays first-call costs (imports, page cache).
        small_gt, small_dt = Path(tmp) / "sg.json", Path(tmp) / "sd.json"
        sgt, sdt = random_coco_case(args.seed + 1, num_images=5)
        small_gt.write_text(json.dumps(sgt))
        small_dt.write_text(json.dumps(sdt))
        for fn in (_pycocotools, _faster, _masklab):
            fn(small_gt, small_dt, args.iou_type)
        sides = [("pycocotools", _pycocotools), ("faster-coco-eval", _faster), ("masklab", _masklab)]
        times: dict[str, float] = {name: float("inf") for name, _ in sides}
        stats: dict[str, np.ndarray] = {}
        for r in range(args.repeats):
            for name, fn in sides[r % 3 :] + sides[: r % 3]:  # rotate who goes first
                start = time.perf_counter()
                stats[name] = fn(gt_path, dt_path, args.iou_type)
                times[name] = min(times[name], time.perf_counter() - start)
        for name, _ in sides:
            print(f"{name:>17}: {times[name]:7.3f} s (best of {args.repeats})")
    ref = stats["pycocotools"]
    for name in ("faster-coco-eval", "masklab"):
        print(f"max |stat - pycocotools| {name}: {np.abs(stats[name] - ref).max():.3g}")
    print(f"speed-up masklab vs pycocotools:      {times['pycocotools'] / times['masklab']:.2f}x")
    print(f"speed-up masklab vs faster-coco-eval: {times['faster-coco-eval'] / times['masklab']:.2f}x")


if __name__ == "__main__":
    main()
