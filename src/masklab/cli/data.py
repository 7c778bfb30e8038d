"""``masklab data synth --out DIR``: write the built-in synthetic shapes dataset."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = sub.add_parser("synth", help="write the deterministic synthetic shapes dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--num-train", type=int, default=200, help="training images (default 200)")
    synth.add_argument("--num-val", type=int, default=50, help="validation images (default 50)")
    synth.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    synth.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes drawing images (default: the CPUs; same bytes for any number)",
    )
    synth.add_argument("--max-objects", type=int, default=5, help="objects per image at most (default 5)")


def run(args: argparse.Namespace) -> int:
    from masklab.data.synthetic import synthesize

    report = synthesize(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        seed=args.seed,
        max_objects=args.max_objects,
        workers=args.workers,
    )
    print(report)
    return 0
