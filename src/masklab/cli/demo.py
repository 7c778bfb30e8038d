"""``masklab demo``: synthesize the shapes dataset, train, evaluate and infer in a few CPU minutes.

It prints the per-class IoU table and where the pictures are. ``--quick`` shrinks everything to a
smoke run (used by the tests).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_CONFIG = "configs/fpn/fpn_r18_1xb8-800i_synthetic-128x128.yaml"


def repo_root() -> Path:
    """The source checkout holding ``configs/`` (masklab is installed editable by ``make``)."""
    return Path(__file__).resolve().parents[3]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default="work_dirs/demo", help="run folder (default work_dirs/demo)")
    parser.add_argument(
        "--data-root", default="data/synthetic", help="synthetic dataset folder (default data/synthetic)"
    )
    parser.add_argument("--config", default=None, help=f"config to train (default {DEMO_CONFIG})")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for the demo config")


def run(args: argparse.Namespace) -> int:
    from masklab.config.assemble import build_trainer, resolve
    from masklab.data.synthetic import synthesize
    from masklab.errors import ConfigError
    from masklab.inference.inferencer import Inferencer

    start = time.perf_counter()
    config = Path(args.config) if args.config else repo_root() / DEMO_CONFIG
    if not config.is_file():
        raise ConfigError(f"{config}: demo config not found (run the demo from a masklab source checkout)")
    num_train, num_val = (16, 4) if args.quick else (300, 60)
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
    miou = metrics.get("mIoU", float("nan"))
    print(f"demo finished in {elapsed / 60:.1f} min: val mIoU {miou:.3f}")
    print(f"  checkpoint: {ckpt}")
    print(f"  {len(preds)} predictions: {out_dir / 'pred'} (label PNGs), overlays: {out_dir / 'vis'}")
    print(f"  logs: {work_dir / 'log.jsonl'}, TensorBoard: tensorboard --logdir {work_dir / 'tb'}")
    return 0
