"""``masklab config show CFG [key=value ...]``: print the fully resolved config."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config (bases merged, overrides applied)")
    show.add_argument("config", help="path to a YAML config")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.optim.lr=0.01")


def run(args: argparse.Namespace) -> int:
    from masklab.config.load import show_config

    print(show_config(args.config, args.overrides), end="")
    return 0
