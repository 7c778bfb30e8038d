"""``masklab doctor CFG [key=value ...] [--work-dir W] [--steps N]``: check data, transforms,
config and model before a long run; prints a table, writes ``doctor.md`` and pictures, exits 1 on errors."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dataset.root=data/x")
    parser.add_argument(
        "--work-dir", help="where doctor.md and pictures go (default work_dirs/<config>/doctor)"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="steps of the overfit-one-batch check (default 20)"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="train-pipeline samples to check and draw (default 8)"
    )
    parser.add_argument(
        "--max-files",
        type=int,
        default=0,
        help="label maps, or COCO images and their masks, read per split at most (0 = all)",
    )


def run(args: argparse.Namespace) -> int:
    from masklab.cli.common import prepare_work_dir, resolve_for_cli
    from masklab.config.assemble import default_work_dir
    from masklab.doctor import DoctorContext, run_checks
    from masklab.doctor.finding import worst
    from masklab.doctor.report import print_report, write_markdown
    from masklab.errors import ConfigError

    if args.steps < 0 or args.samples < 0 or args.max_files < 0:
        raise ConfigError(
            f"doctor: --steps/--samples/--max-files must be >= 0, got {args.steps}/{args.samples}/{args.max_files}"
        )
    rc = resolve_for_cli(args.config, args.overrides)
    work_dir = prepare_work_dir(rc, args.work_dir or str(default_work_dir(rc) / "doctor"))
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = DoctorContext(rc, work_dir, steps=args.steps, samples=args.samples, max_files=args.max_files)
    findings = run_checks(ctx)
    print_report(findings)
    report = write_markdown(work_dir / "doctor.md", findings, args.config, ctx.pictures)
    print(f"report: {report}")
    return 1 if worst(findings) == "error" else 0
