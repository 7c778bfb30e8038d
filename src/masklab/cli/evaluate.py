"""``masklab evaluate CFG CKPT [key=value ...]``, ``masklab evaluate coco --gt GT --pred PRED`` and
``masklab evaluate panoptic --gt-json --gt-folder --pred-json --pred-folder``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config, or 'coco' / 'panoptic' to compare two files")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file (.pth) to evaluate")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. evaluate.mode=slide")
    parser.add_argument("--out", help="write the metrics JSON here (default: next to the checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--confusion", metavar="DIR", help="also write confusion_matrix.png/.csv here (semantic configs)"
    )
    parser.add_argument(
        "--format-only",
        metavar="DIR",
        help="write one label PNG per image of dataset.val to DIR (benchmark submission; no metrics, "
        "no labels needed); sets evaluate.format_only / evaluate.output_dir",
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
    from masklab.cli.output import check_output_dir
    from masklab.config.assemble import (
        build_dataset,
        build_evaluator,
        build_val_loader,
        dataset_meta,
    )
    from masklab.engine.distributed import is_main_process, teardown
    from masklab.engine.val_loop import ValLoop
    from masklab.errors import CheckpointError, ConfigError

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: checkpoint file not found")
    rc = resolve_for_cli(args.config, args.overrides)
    format_dir = args.format_only or (rc.evaluate.output_dir if rc.evaluate.format_only else None)
    if format_dir:
        return _format_only(args, rc, ckpt, format_dir)
    # Every output is checked before the evaluation: a long run must not end in a path error, nor
    # leave one output written when another cannot be.
    out = _output_file(args.out, ckpt)
    confusion_dir = check_output_dir(args.confusion, "--confusion") if args.confusion else None
    real, device = _checkpoint_and_device(args, rc, ckpt)
    val_set = build_dataset(rc, "val")
    if getattr(val_set, "labels", True) is False:
        raise ConfigError(
            "dataset.val.labels: false reads no label maps, so there is nothing to score; write "
            "predictions for a benchmark server with --format-only DIR, or set labels: true"
        )
    model = _checked_model(rc, ckpt, real, val_set, device)
    evaluator = build_evaluator(rc, val_set)
    if confusion_dir is not None:
        from masklab.evaluation.confusion import with_confusion

        evaluator = with_confusion(evaluator, dataset_meta(val_set), rc.task)
    loop = ValLoop(model, build_val_loader(rc, val_set), evaluator, precision=rc.runtime.precision)
    metrics = loop.run(progress=not args.no_progress)
    main_process = is_main_process()  # asked before teardown, after which every rank reads as 0
    teardown()  # the metrics are reduced: nothing collective is left
    if main_process:
        _report_and_write(evaluator, metrics, ckpt, out, confusion_dir)
    return 0


def _format_only(args: argparse.Namespace, rc: Any, ckpt: Path, out_dir: str) -> int:
    """``--format-only DIR``: predict ``dataset.val`` exactly as the evaluation does and write one
    label PNG per image (MMSeg's ``format_only``); no labels read, no metrics computed."""
    from masklab.cli.output import check_output_dir
    from masklab.config.assemble import (
        build_dataset,
        build_val_loader,
    )
    from masklab.engine.distributed import is_main_process, teardown
    from masklab.engine.val_loop import ValLoop
    from masklab.errors import ConfigError
    from masklab.evaluation.format_only import LabelPngFormatter, output_names, output_values

    flag = "--format-only" if args.format_only else "evaluate.output_dir"
    if rc.task != "semantic":
        raise ConfigError(
            f"{flag}: format_only is for semantic models; instance models write COCO results with "
            "`masklab infer CFG CKPT --input DIR` (pred/instances.json)"
        )
    if args.out or args.confusion:
        raise ConfigError(f"{flag}: computes no metrics; --out and --confusion cannot be given with it")
    directory = check_output_dir(out_dir, flag)
    real, device = _checkpoint_and_device(args, rc, ckpt)
    val_set = build_dataset(rc, "val", labels=False)
    names = output_names(val_set)  # name clashes stop the run before anything is predicted
    values, description = output_values(val_set)
    model = _checked_model(rc, ckpt, real, val_set, device)
    formatter = LabelPngFormatter(directory, names, values, description)
    loop = ValLoop(model, build_val_loader(rc, val_set), formatter, precision=rc.runtime.precision)
    loop.run(progress=not args.no_progress)
    main_process = is_main_process()
    teardown()
    if main_process:
        print(formatter.summary())
    return 0


def _checkpoint_and_device(args: argparse.Namespace, rc: Any, ckpt: Path) -> tuple[Path, Any]:
    """The checkpoint file ``ckpt`` names (``latest`` is a pointer file), checked to be of the config's
    task (a MAL checkpoint with a semantic config, ...), and the device, with the process group joined
    under torchrun."""
    from masklab.config.assemble import resolve_device
    from masklab.engine.checkpoint import check_checkpoint_task, follow_latest
    from masklab.engine.distributed import init_distributed

    real = follow_latest(ckpt)
    check_checkpoint_task(real, rc.task, args.config)
    device = resolve_device(rc.runtime.device)
    if "LOCAL_RANK" in os.environ:
        init_distributed(device=device)
    return real, device


def _checked_model(rc: Any, ckpt: Path, real: Path, val_set: Any, device: Any) -> Any:
    """The model of ``rc`` with the checkpoint's weights, in evaluation mode, on ``device``; the
    checkpoint's class list checked against ``val_set``'s first."""
    from masklab.config.assemble import apply_eval_settings, build_model, dataset_meta, place_model
    from masklab.data.split_meta import check_checkpoint_meta
    from masklab.engine.checkpoint import load_checkpoint
    from masklab.engine.distributed import is_main_process

    payload = None if real.suffix == ".safetensors" else load_checkpoint(real)
    # Same class list in another order: same model, same weights, wrong per-class metrics.
    saved_meta = (payload or {}).get("dataset_meta")
    check_checkpoint_meta(saved_meta, val_set, str(ckpt), "dataset.val", attributes=rc.task != "semantic")
    model = build_model(rc, dataset_meta(val_set))
    loaded = _load_weights(model, payload if payload is not None else real, ckpt)
    if loaded.ema and is_main_process():
        print(loaded.message(str(ckpt)))
    apply_eval_settings(model, rc)
    place_model(model, rc, device)
    return model


def _report_and_write(
    evaluator: Any, metrics: Any, ckpt: Path, out: Path, confusion_dir: Path | None
) -> None:
    """Print the metrics report; write the confusion matrix (when asked) and the metrics JSON."""
    from masklab import strict_json
    from masklab.atomic_files import atomic_write

    report = getattr(evaluator, "format_report", None)
    description = getattr(evaluator, "metric_description", "")
    if report is not None:
        print(report())  # every report ends with how its metrics were computed
    elif description:
        print(description)
    text = strict_json.dumps({"checkpoint": str(ckpt), "metrics": metrics, "how": description}, indent=2)
    if confusion_dir is not None:
        png, csv_path = evaluator.confusion.save(confusion_dir)
        print(evaluator.confusion.format_report())
        print(f"confusion matrix written to {png} and {csv_path}")
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"metrics written to {out}")


def _load_weights(model: Any, source: Any, ckpt: Path) -> Any:
    """Strict load of ``source`` (the payload read once, or a safetensors path); a mismatch names
    ``ckpt`` rather than ``<state dict>``."""
    from masklab.engine.checkpoint import load_model_weights
    from masklab.errors import CheckpointError

    try:
        return load_model_weights(model, source, strict=True)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("<state dict>", str(ckpt), 1)) from None


def _output_file(out: str | None, ckpt: Path) -> Path:
    """The metrics JSON path (default: next to the checkpoint), checked writable as a file."""
    from masklab.cli.output import check_output_file

    if out is not None:
        return check_output_file(out, "--out", "metrics.json")
    return check_output_file(
        ckpt.with_name(f"{ckpt.stem}.metrics.json"), "--out (default: next to the checkpoint)"
    )
