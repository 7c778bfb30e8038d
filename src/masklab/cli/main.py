"""The ``masklab`` command: one sub-command per small module in this package.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their command runs, so ``masklab --help`` stays fast. A :class:`MasklabError` anywhere
below ends as one ``error: ...`` line on stderr and exit code 2; nothing else of a user mistake
reaches the terminal as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from masklab import __version__
from masklab.errors import MasklabError

# name -> (module, one-line help). Nested groups (data, config, export, convert) have their own table.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("masklab.cli.train", "train a model from a config"),
    "evaluate": (
        "masklab.cli.evaluate",
        "evaluate a checkpoint on the config's val set, or `evaluate coco` two COCO files",
    ),
    "infer": ("masklab.cli.infer", "run a checkpoint on images and write predictions and overlays"),
    "data": ("masklab.cli.data", "dataset tools (synth)"),
    "config": ("masklab.cli.config_cmd", "config tools (show)"),
    "demo": ("masklab.cli.demo", "synthesize data, train, evaluate and infer in a few CPU minutes"),
}


def _optional_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this build (families land one by one)."""
    extra = {
        "export": ("masklab.cli.export", "export a checkpoint (onnx, safetensors)"),
        "doctor": ("masklab.cli.doctor", "find training bugs before they cost a week"),
        "convert": ("masklab.cli.convert", "import weights from other frameworks"),
        "analyze-logs": ("masklab.cli.analyze_logs", "plot loss and metric curves from log.jsonl"),
        "browse-dataset": ("masklab.cli.browse_dataset", "render the train pipeline's output with labels"),
        "benchmark": ("masklab.cli.benchmark", "params/FLOPs and inference speed of a config"),
    }
    found = {}
    for name, (module, help_) in extra.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_)
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="masklab",
        description="Config-driven image segmentation: semantic, Mask2Former with attribute heads, MAL.",
    )
    parser.add_argument("--version", action="version", version=f"masklab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, str] = {}
    for name, (module, help_) in {**COMMANDS, **_optional_commands()}.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, modules = build_parser()
    # Overrides may follow options (`train CFG --work-dir W key=value`): argparse stops filling the
    # `overrides` positional at the first option, so collect the leftovers back into it.
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [a for a in extra if a.startswith("-")]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if not args.command:
        parser.print_help()
        return 1
    try:
        return int(importlib.import_module(modules[args.command]).run(args) or 0)
    except MasklabError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
