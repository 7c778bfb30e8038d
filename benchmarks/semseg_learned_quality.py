"""Learned quality of every semantic family's synthetic config within a CPU-time budget (issue #4).

Run: ``.venv/bin/python benchmarks/semseg_learned_quality.py [--cpu-minutes 15] [--families fpn pspnet ...]
[--data DIR] [--work-root DIR] [KEY=VALUE ...]`` (trailing dotted overrides apply to every family).

For each family's synthetic config (``configs/<family>/*_synthetic-*.yaml``, the table below) the script

1. measures the CPU seconds of one training iteration on this machine (``runtime.num_threads`` torch
   threads, default 1: a short in-process probe of ``--probe-iters`` iterations after a warm-up),
2. sizes ``train.max_iters`` so that training fits ``--cpu-minutes`` (the LR schedule then spans the
   whole budget, as a user who knows the budget would set it),
3. trains it in a subprocess (``masklab train``, one evaluation at the end) and reads the val metrics.

Reported per family: iterations, ``train_cpu_s`` from ``log.jsonl`` (CPU seconds of the training
process's compute, evaluation excluded), the whole run's CPU seconds (the training process and its
data workers, evaluation included, from ``getrusage``), wall seconds, mIoU / mAcc / aAcc and per-class
IoU. The dataset is the built-in synthetic shapes (``masklab data synth``, 2000 train / 60 val images at
128 px, seed 0, as ``masklab demo``) unless ``--data`` points at another synthetic folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "fcn": "configs/fcn/fcn_mit-b0_1xb8-3600i_synthetic-128x128.yaml",
    "pspnet": "configs/pspnet/pspnet_mit-b0_1xb8-4800i_synthetic-96x96.yaml",
    "deeplabv3": "configs/deeplabv3/deeplabv3_mit-b0_1xb8-4200i_synthetic-96x96.yaml",
    "deeplabv3plus": "configs/deeplabv3plus/deeplabv3plus_mit-b0_1xb8-4200i_synthetic-96x96.yaml",
    "upernet": "configs/upernet/upernet_mit-b0_1xb8-2400i_synthetic-128x128.yaml",
    "segformer": "configs/segformer/segformer_mit-b0_1xb8-3400i_synthetic-128x128.yaml",
    "fpn": "configs/fpn/fpn_mit-b0_1xb8-2900i_synthetic-128x128.yaml",
    "fpn-regnetx002": "configs/fpn/fpn_regnetx002_1xb8-2000i_synthetic-128x128.yaml",
}


def probe_cpu_per_iter(config: Path, overrides: list[str], iters: int, warmup: int) -> float:
    """CPU seconds (this process, all its threads) per training iteration of ``config``."""
    from masklab.config.assemble import build_trainer, resolve

    rc = resolve(config, [*overrides, "train.num_workers=0"])
    with tempfile.TemporaryDirectory(prefix="semseg_quality_probe_") as probe_dir:
        trainer = build_trainer(rc, work_dir=Path(probe_dir), progress=False, with_val=False)
        return _cpu_per_step(trainer, iters, warmup)


def _cpu_per_step(trainer: Any, iters: int, warmup: int) -> float:
    """CPU seconds per ``trainer.run_step`` after ``warmup`` untimed steps."""
    trainer.model.train()
    batches = trainer._batches()
    for _ in range(warmup):
        trainer.run_step(batches)
    # Loading is charged too (num_workers=0 here); the real run loads in a worker process.
    start = time.process_time()
    for _ in range(iters):
        trainer.run_step(batches)
    return (time.process_time() - start) / iters


def read_result(work_dir: Path) -> dict[str, object]:
    metrics = json.loads((work_dir / "metrics.json").read_text())["latest"]["metrics"]
    train_cpu = None
    for line in (work_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("mode") == "train" and "train_cpu_s" in record:
            train_cpu = record["train_cpu_s"]
    return {"metrics": metrics, "train_cpu_s": train_cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--cpu-minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probe-iters", type=int, default=8)
    parser.add_argument("--data", type=Path, default=Path("/tmp/semseg_quality/data"))
    parser.add_argument("--work-root", type=Path, default=Path("/tmp/semseg_quality/runs"))
    parser.add_argument("--dry-run", action="store_true", help="probe and print the plan, do not train")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides for every family")
    args = parser.parse_args(argv)

    from masklab.data.synthetic import synthesize

    print(synthesize(args.data, num_train=2000, num_val=60, size=128, seed=0))
    common = [f"dataset.root={args.data}", f"runtime.num_threads={args.threads}", *args.overrides]
    budget = args.cpu_minutes * 60.0
    rows = []
    for family in args.families:
        config = REPO / FAMILIES[family]
        per_iter = probe_cpu_per_iter(config, common, args.probe_iters, warmup=2)
        iters = max(10, int(budget / per_iter))
        print(
            f"{family}: {per_iter:.3f} CPU-s/iteration -> max_iters {iters} for {args.cpu_minutes:g} CPU-min",
            flush=True,
        )
        if args.dry_run:
            continue
        work_dir = args.work_root / family
        cmd = [
            sys.executable, "-m", "masklab", "train", str(config), "--work-dir", str(work_dir), "--no-progress",
            *common, f"train.max_iters={iters}", f"train.val_interval={iters}",
            f"train.checkpoint_interval={iters}", f"train.log_interval={max(1, iters // 10)}",
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        out_file = work_dir.parent / f"{family}.out"
        with out_file.open("w") as out:  # a file, not a pipe: the run survives this script's exit
            done = subprocess.run(
                cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=out
            )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            tail = out_file.read_text().strip().splitlines()[-1:]
            print(f"{family}: training failed (exit {done.returncode}): {tail} (log: {out_file})")
            continue
        result = read_result(work_dir)
        run_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rows.append((family, iters, result["train_cpu_s"], run_cpu, wall, result["metrics"]))
        m = result["metrics"]
        print(
            f"{family}: mIoU {m['mIoU']:.3f}  mAcc {m['mAcc']:.3f}  aAcc {m['aAcc']:.3f}  iterations {iters}  "
            f"train_cpu_s {result['train_cpu_s']:.0f}  run CPU {run_cpu:.0f} s  wall {wall:.0f} s",
            flush=True,
        )
    if rows:
        print("\n| family | iterations | train CPU-min | run CPU-min | wall min | mIoU | mAcc | aAcc |")
        print("|---|---|---|---|---|---|---|---|")
        for family, iters, train_cpu, run_cpu, wall, m in rows:
            print(
                f"| {family} | {iters} | {train_cpu / 60:.1f} | {run_cpu / 60:.1f} | {wall / 60:.1f} | "
                f"{m['mIoU']:.3f} | {m['mAcc']:.3f} | {m['aAcc']:.3f} |"
            )
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
