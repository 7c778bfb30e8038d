"""``masklab evaluate coco``: COCO AP (and attribute metrics) of a results file against ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from masklab import strict_json
from masklab.atomic_files import atomic_write
from masklab.cli.output import check_output_file
from masklab.data.coco.load import load_coco
from masklab.data.coco.results import load_coco_results
from masklab.errors import ConfigError
from masklab.evaluation.coco.ap import evaluate_ap
from masklab.evaluation.coco.attributes import attribute_scores, joint_ap
from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.report import format_coco_report
from masklab.evaluation.coco.tables import DetTable, GtTable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masklab evaluate coco``."""
    parser.add_argument("--gt", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--pred", required=True, help="COCO results JSON (a list of detections)")
    parser.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    parser.add_argument(
        "--max-dets", type=int, nargs="+", default=[1, 10, 100], help="COCO maxDets, ascending"
    )
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the report, optionally write ``--out``; returns the exit code."""
    # The settings and the output path are checked before any file is read or evaluated.
    try:
        params = CocoEvalParams(iou_type=args.iou_type, max_dets=tuple(args.max_dets))
    except ConfigError:
        shown = " ".join(str(m) for m in args.max_dets)
        raise ConfigError(
            f"--max-dets {shown}: expected increasing positive integers, e.g. 1 10 100"
        ) from None
    out = check_output_file(args.out, "--out", "metrics.json") if args.out else None
    gt = load_coco(args.gt)
    dets = load_coco_results(args.pred, gt)
    gt_table = GtTable.from_coco(gt, params.iou_type)
    dt_table = DetTable.from_detections(dets, params.iou_type, where=args.pred)
    image_ids = [im.id for im in gt.images]
    result = evaluate_ap(gt_table, dt_table, params, image_ids=image_ids, category_ids=gt.category_ids)
    metrics: dict[str, object] = dict(result.stats)
    names = {c.id: c.name for c in gt.categories}
    metrics["per_category"] = {names[c]: ap for c, ap in result.per_category.items()}
    attrs = []
    # Attribute metrics only when both files carry attributes.
    if gt.attributes and any(d.attributes for d in dets):
        attr_names = [a.name for a in gt.attributes]
        attrs = attribute_scores(gt, dets, result, attr_names)
        for s in attrs:
            metrics[f"attr/{s.name}/acc"] = s.accuracy
            metrics[f"attr/{s.name}/f1"] = s.macro_f1
        joint = joint_ap(gt, gt_table, dets, dt_table, params, image_ids, attr_names)
        metrics["joint/AP"] = joint.stats["AP"]
        metrics["joint/AP50"] = joint.stats["AP50"]
    flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(format_coco_report({params.iou_type: result}, names, attrs, flat, params.describe()))
    if out is not None:
        _write_json(out, metrics)
    return 0


def _write_json(path: Path, data: dict[str, object]) -> None:
    text = strict_json.dumps(data, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))
