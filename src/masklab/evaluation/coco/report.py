"""Console tables for COCO results (the familiar 12 lines, per-category AP, attributes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from masklab.evaluation.coco.ap import CocoApResult
from masklab.evaluation.coco.attributes import AttributeScores

_LINES = {
    "AP": ("Average Precision", "0.50:0.95", "all"),
    "AP50": ("Average Precision", "0.50", "all"),
    "AP75": ("Average Precision", "0.75", "all"),
    "APs": ("Average Precision", "0.50:0.95", "small"),
    "APm": ("Average Precision", "0.50:0.95", "medium"),
    "APl": ("Average Precision", "0.50:0.95", "large"),
    "ARs": ("Average Recall", "0.50:0.95", "small"),
    "ARm": ("Average Recall", "0.50:0.95", "medium"),
    "ARl": ("Average Recall", "0.50:0.95", "large"),
}


def format_stats(result: CocoApResult) -> list[str]:
    """The 12 lines pycocotools prints, from ``result.stats``."""
    last = result.params.max_dets[-1]
    lines = []
    for key, value in result.stats.items():
        if key in _LINES:
            title, iou, area = _LINES[key]
            max_det = last
        else:  # AR<maxDets>
            title, iou, area, max_det = "Average Recall", "0.50:0.95", "all", int(key[2:])
        kind = "(AP)" if title.startswith("Average Precision") else "(AR)"
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_det:>3d} ] = {value:0.3f}"
        )
    return lines


def format_coco_report(
    results: Mapping[str, CocoApResult],
    category_names: Mapping[int, str],
    attributes: Sequence[AttributeScores],
    metrics: Mapping[str, float],
    description: str,
) -> str:
    """Stats per IoU type, per-category AP, attribute accuracy/F1 and joint AP, then how it was computed."""
    out: list[str] = []
    for iou_type, result in results.items():
        out.append(f"== {iou_type} ==")
        out.extend(format_stats(result))
        out.append(f"{'category':<24} {'AP':>7}")
        for cid, ap in result.per_category.items():
            out.append(
                f"{category_names.get(cid, str(cid)):<24} {ap:7.3f}"
                if ap >= 0
                else f"{category_names.get(cid, str(cid)):<24} {'n/a':>7}"
            )
    if attributes:
        out.append(f"{'attribute':<24} {'pairs':>6} {'acc':>7} {'F1':>7}")
        for s in attributes:
            out.append(f"{s.name:<24} {s.count:>6d} {s.accuracy:7.3f} {s.macro_f1:7.3f}")
    if "joint/AP" in metrics:
        out.append(
            f"joint AP (class and all attributes right): {metrics['joint/AP']:0.3f}  AP50 {metrics['joint/AP50']:0.3f}"
        )
    out.append(f"({description})")
    return "\n".join(out)
