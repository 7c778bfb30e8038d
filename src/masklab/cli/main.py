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
import re
import sys
from collections.abc import Sequence
from pathlib import Path

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


# torch re-raises an exception from a DataLoader worker as ``type(err)(text)`` where ``text`` is
# "Caught DataError in DataLoader worker process 1.\nOriginal Traceback ...\nmasklab.errors.DataError:
# <message>"; the error classes join those lines, so the original message is what follows the last
# "<module>.<class>: " of the text.
_WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\. Original Traceback")


def error_line(err: MasklabError) -> str:
    """The one line printed for ``err``: its message, or for an error raised in a DataLoader worker
    process the original error's message without torch's traceback around it."""
    text = str(err)
    if not _WORKER_ERROR.match(text):
        return text
    cls = type(err)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    cut = text.rfind(marker)
    return text[cut + len(marker) :].strip() if cut >= 0 else text


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
        print(f"error: {error_line(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno is None or err.filename is None:
            raise  # not about a path the user gave: a bug, keep the traceback
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def os_error_line(err: OSError) -> str:
    """``path: reason`` for a file-system error on a path (an unwritable ``--out``, a full disk, a
    folder where a file was expected): the user's to fix, so one line rather than a traceback.
    Temporary names of atomic writes (``.name.XXXX.tmp``) are shown as the file they stand for."""
    import errno as errno_codes

    def shown(name: object) -> str:
        path = Path(str(name))
        match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", path.name)
        return str(path.with_name(match.group(1))) if match else str(path)

    where = shown(err.filename)
    if err.filename2 is not None:
        where += f" -> {shown(err.filename2)}"
    reason = err.strerror or errno_codes.errorcode.get(err.errno or 0, "error")
    if err.errno == errno_codes.EEXIST and Path(str(err.filename)).is_file():
        reason = "is a file, where a folder is needed"
    return f"{where}: {reason.lower() if reason[:1].isupper() and reason[1:2].islower() else reason}"


if __name__ == "__main__":
    raise SystemExit(main())
