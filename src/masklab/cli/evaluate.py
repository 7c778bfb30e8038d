"""``masklab evaluate CFG CKPT [key=value ...]``, ``masklab evaluate coco --gt GT --pred PRED`` and
``masklab evaluate panoptic --gt-json --gt-folder --pred-json --pred-folder``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config, or 'coco' / 'panoptic' to compare two files")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file (.pth) to evaluate")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. evaluate.mode=slide")
    parser.add_argument("--out", help="write the metrics JSON here (default: next to the checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--confusion", metavar="DIR", help="also write confusion_matrix.png/.csv here (semantic configs)"
    )
    coco = parser.add_argument_group("evaluate coco")
    coco.add_argument("--gt", help="ground-truth COCO instances JSON")
    coco.add_argument("--pred", help="COCO results JSON")
    coco.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    coco.add_argument("--max-dets", type=int, nargs="+", default=[1, 10, 100])
    pan = parser.add_argument_group("evaluate panoptic")
    for side in ("gt", "pred"):
        pan.add_argument(f"--{side}-json", help=f"COCO-panoptic JSON ({side})")
        pan.add_argument(f"--{side}-folder", help=f"folder of the panoptic PNGs ({side})")


def run(args: argparse.Namespace) -> int:
    from masklab.errors import ConfigError

    if args.config == "coco":
        from masklab.cli import evaluate_coco

        if args.checkpoint is not None or args.overrides:
            raise ConfigError("evaluate coco: takes only --gt, --pred, --iou-type, --max-dets and --out")
        return evaluate_coco.run(args)
    if args.config == "panoptic":
        from masklab.cli import evaluate_panoptic

        if args.checkpoint is not None or args.overrides:
            raise ConfigError(
                "evaluate panoptic: takes only --gt-json, --gt-folder, --pred-json, --pred-folder and --out"
            )
        return evaluate_panoptic.run(args)
    if args.checkpoint is None:
        raise ConfigError("evaluate: expected CONFIG CHECKPOINT (or `evaluate coco --gt GT --pred PRED`)")
    return _evaluate_checkpoint(args)


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    from masklab.cli.common import resolve_for_cli
    from masklab.config.assemble import (
        apply_eval_settings,
        build_dataset,
        build_evaluator,
        build_model,
        build_val_loader,
        dataset_meta,
        place_model,
        resolve_device,
    )
    from masklab.engine.checkpoint import check_checkpoint_task, load_model_weights
    from masklab.engine.distributed import init_distributed, is_main_process, teardown
    from masklab.engine.val_loop import ValLoop
    from masklab.errors import CheckpointError

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: checkpoint file not found")
    rc = resolve_for_cli(args.config, args.overrides)
    check_checkpoint_task(ckpt, rc.task, args.config)  # a MAL checkpoint with a semantic config, ...
    device = resolve_device(rc.runtime.device)
    if "LOCAL_RANK" in os.environ:
        init_distributed(device=device)
    val_set = build_dataset(rc, "val")
    model = build_model(rc, dataset_meta(val_set))
    loaded = load_model_weights(model, ckpt, strict=True)
    if loaded.ema and is_main_process():
        print(loaded.message(str(ckpt)))
    apply_eval_settings(model, rc)
    place_model(model, rc, device)
    evaluator = build_evaluator(rc, val_set)
    if args.confusion:
        from masklab.evaluation.confusion import with_confusion

        evaluator = with_confusion(evaluator, dataset_meta(val_set), rc.task)
    loop = ValLoop(model, build_val_loader(rc, val_set), evaluator, precision=rc.runtime.precision)
    metrics = loop.run(progress=not args.no_progress)
    main_process = is_main_process()  # asked before teardown, after which every rank reads as 0
    teardown()  # the metrics are reduced: nothing collective is left
    if not main_process:
        return 0
    report = getattr(evaluator, "format_report", None)
    description = getattr(evaluator, "metric_description", "")
    if report is not None:
        print(report())  # every report ends with how its metrics were computed
    elif description:
        print(description)
    if args.confusion:
        png, csv_path = evaluator.confusion.save(args.confusion)
        print(evaluator.confusion.format_report())
        print(f"confusion matrix written to {png} and {csv_path}")
    out = Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}.metrics.json")
    from masklab import strict_json
    from masklab.atomic_files import atomic_write

    text = strict_json.dumps({"checkpoint": str(ckpt), "metrics": metrics, "how": description}, indent=2)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"metrics written to {out}")
    return 0
