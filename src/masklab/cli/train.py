"""``masklab train CFG [--work-dir W] [--resume [CKPT]] [--nproc N] [key=value ...]``."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_iters=200")
    parser.add_argument(
        "--work-dir", help="run folder (default: runtime.work_dir or work_dirs/<config name>)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or from the work dir's latest checkpoint when no file is given",
    )
    parser.add_argument(
        "--nproc", type=int, default=None, help="processes on this machine (launches torchrun)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args)
    from masklab.cli.common import prepare_work_dir, resolve_for_cli
    from masklab.config.assemble import build_trainer, resolve_device
    from masklab.engine.distributed import init_distributed, is_main_process, teardown
    from masklab.errors import CheckpointError

    rc = resolve_for_cli(args.config, args.overrides)
    device = resolve_device(rc.runtime.device)
    info = init_distributed(device=device) if "LOCAL_RANK" in os.environ else None
    work_dir = prepare_work_dir(rc, args.work_dir)
    trainer = build_trainer(rc, work_dir=work_dir, progress=not args.no_progress)
    main_process = is_main_process()  # asked before teardown, after which every rank reads as 0
    try:
        if is_main_process():
            trainer.log(trainer.lr_message) if trainer.lr_message else None
        if args.resume or rc.train.resume:
            source = None if args.resume in (None, "latest") else args.resume
            used = trainer.resume(source)
            if used is None:
                raise CheckpointError(f"{work_dir / 'checkpoints'}: no checkpoint to resume from")
        if is_main_process():
            rc.config.dump(work_dir / "config.yaml")
        trainer.train()
    finally:
        if info is not None and info.is_distributed:
            teardown(trainer.release_model())
    if main_process:
        print(f"done: {trainer.iter} iterations; checkpoints in {work_dir / 'checkpoints'}")
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this command under ``torchrun --nproc_per_node N`` (single machine)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    argv = [a for a in sys.argv[1:]]
    cleaned: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [torchrun, "--standalone", f"--nproc_per_node={args.nproc}", "-m", "masklab", *cleaned]
    return subprocess.call(cmd)
