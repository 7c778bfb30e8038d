"""``masklab demo``: synthesize the shapes dataset, train, evaluate and infer in a few CPU minutes.

It prints the per-class IoU table and where the pictures are. ``--model instance`` trains the
CPU-sized Mask2Former with colour/pattern attribute heads instead and prints the COCO segm AP /
attribute accuracy / joint AP report; its predictions are COCO results (``pred/instances.json``) and
overlays labelled with class and attributes. ``--quick`` shrinks everything to a smoke run (used by
the tests).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_CONFIG = "configs/segformer/segformer_mit-b0_1xb8-1800i_synthetic-128x128.yaml"

# Training images the demo synthesizes: on 300 the from-scratch models overfit within the demo's
# iterations (docs/semantic.md, "The demo model"); 2000 take ~1 min to draw on 2 cores.
DEMO_NUM_TRAIN, DEMO_NUM_VAL = 2000, 60

# ``--model instance``: Mask2Former + attribute heads (docs/mask2former.md, "Learned quality").
INSTANCE_CONFIG = "configs/mask2former/mask2former_regnetx002_1xb8-2200i_synthetic-128x128.yaml"
DEMO_CONFIGS = {"semantic": DEMO_CONFIG, "instance": INSTANCE_CONFIG}


def repo_root() -> Path:
    """The source checkout holding ``configs/`` (masklab is installed editable by ``make``)."""
    return Path(__file__).resolve().parents[3]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default="work_dirs/demo", help="run folder (default work_dirs/demo)")
    parser.add_argument(
        "--data-root", default="data/synthetic", help="synthetic dataset folder (default data/synthetic)"
    )
    parser.add_argument(
        "--model",
        choices=sorted(DEMO_CONFIGS),
        default="semantic",
        help="semantic (default) or instance: Mask2Former with colour/pattern attribute heads",
    )
    parser.add_argument(
        "--config", default=None, help=f"config to train (default {DEMO_CONFIG}; instance: {INSTANCE_CONFIG})"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for the demo config")


def run(args: argparse.Namespace) -> int:
    from masklab.config.assemble import build_trainer, resolve
    from masklab.data.synthetic import synthesize
    from masklab.errors import ConfigError
    from masklab.inference.inferencer import Inferencer

    start = time.perf_counter()
    model = getattr(args, "model", "semantic")
    config = Path(args.config) if args.config else repo_root() / DEMO_CONFIGS[model]
    if not config.is_file():
        raise ConfigError(f"{config}: demo config not found (run the demo from a masklab source checkout)")
    num_train, num_val = (16, 4) if args.quick else (DEMO_NUM_TRAIN, DEMO_NUM_VAL)
    report = synthesize(args.data_root, num_train=num_train, num_val=num_val, size=128, seed=0)
    print(report)
    overrides = [f"dataset.root={args.data_root}", *args.overrides]
    if args.quick:
        overrides += [
            "train.max_iters=4",
            "train.val_interval=4",
            "train.checkpoint_interval=4",
            "train.log_interval=2",
            "train.batch_size=2",
            "train.num_workers=0",
        ]
    rc = resolve(config, overrides)
    work_dir = Path(args.work_dir)
    trainer = build_trainer(rc, work_dir=work_dir, progress=not args.no_progress)
    if trainer.lr_message:
        trainer.log(trainer.lr_message)
    rc.config.dump(work_dir / "config.yaml")
    trainer.train()
    from masklab.engine.hooks.eval import EvalHook

    hook = trainer.find_hook(EvalHook)
    metrics = hook.latest if hook is not None and hook.latest else trainer.validate()
    metrics = metrics.get("metrics", metrics)
    print(trainer.val_loop.evaluator.format_report())
    ckpt = work_dir / "checkpoints" / "latest.pth"
    from masklab.engine.checkpoint import find_latest

    ckpt = find_latest(work_dir) or ckpt
    inferencer = Inferencer(rc, ckpt, device=str(trainer.device))
    out_dir = work_dir / "infer"
    preds = inferencer(Path(args.data_root) / "images" / "val", out_dir=out_dir)
    elapsed = time.perf_counter() - start
    print(f"demo finished in {elapsed / 60:.1f} min: {summary(rc.task, metrics)}")
    print(f"  checkpoint: {ckpt}")
    if rc.task == "instance":
        where = f"{out_dir / 'pred' / 'instances.json'} (COCO results with attributes)"
        print(f"  {len(preds)} images predicted: {where}, overlays (class + attributes): {out_dir / 'vis'}")
    else:
        print(f"  {len(preds)} predictions: {out_dir / 'pred'} (label PNGs), overlays: {out_dir / 'vis'}")
    print(f"  logs: {work_dir / 'log.jsonl'}, TensorBoard: tensorboard --logdir {work_dir / 'tb'}")
    return 0


def summary(task: str, metrics: dict) -> str:
    """The demo's one-line result: mIoU, or for instance segmentation AP, attribute accuracy, joint AP."""
    if task != "instance":
        return f"val mIoU {metrics.get('mIoU', float('nan')):.3f}"
    parts = [f"val segm AP {metrics.get('segm/AP', float('nan')):.3f}"]
    for key in sorted(k for k in metrics if k.startswith("attr/") and k.endswith("/acc")):
        value = metrics[key]
        parts.append(f"{key.split('/')[1]} acc {float('nan') if value is None else value:.3f}")
    joint = metrics.get("joint/AP")
    parts.append(f"joint AP {float('nan') if joint is None else joint:.3f}")
    return ", ".join(parts)
