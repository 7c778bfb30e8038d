"""``masklab evaluate panoptic``: PQ / SQ / RQ of COCO-panoptic predictions (PNG + JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from masklab.errors import ConfigError
from masklab.evaluation.panoptic import PQResult, pq_compute


def format_pq_table(result: PQResult) -> str:
    """panopticapi's summary table (percent) followed by per-category rows."""
    lines = [f"{'':10}|{'PQ':>8}{'SQ':>8}{'RQ':>8}{'N':>6}", "-" * 41]
    for name, s in (("All", result.all), ("Things", result.things), ("Stuff", result.stuff)):
        lines.append(f"{name:10}|{100 * s.pq:8.1f}{100 * s.sq:8.1f}{100 * s.rq:8.1f}{s.n:6d}")
    lines += ["", f"{'category':24}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'TP':>6}{'FP':>6}{'FN':>6}"]
    for cat_id, c in result.per_category.items():
        cat = result.categories[cat_id]
        name = f"{cat.name or cat_id} ({'thing' if cat.isthing else 'stuff'})"
        lines.append(
            f"{name:24}{100 * c.pq:8.1f}{100 * c.sq:8.1f}{100 * c.rq:8.1f}{c.tp:6d}{c.fp:6d}{c.fn:6d}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the tables, optionally write ``--out``; returns the exit code."""
    need = ("gt_json", "gt_folder", "pred_json", "pred_folder")
    missing = [f"--{n.replace('_', '-')}" for n in need if not getattr(args, n, None)]
    if missing:
        raise ConfigError(f"evaluate panoptic: missing {' '.join(missing)}")
    result = pq_compute(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder)
    print(format_pq_table(result))
    if args.out:
        from masklab.cli.evaluate_coco import _write_json

        names = {c.id: c.name or str(c.id) for c in result.categories.values()}
        per_cat = {names[k]: {"PQ": c.pq, "SQ": c.sq, "RQ": c.rq} for k, c in result.per_category.items()}
        _write_json(Path(args.out), {**result.as_dict(), "per_category": per_cat})
    return 0
