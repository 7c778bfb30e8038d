"""``masklab analyze-logs WORK_DIR_OR_LOG [...] --keys loss mIoU --out curves.png``.

Reads ``log.jsonl`` files (a work dir means its ``log.jsonl``), draws one panel per key with the
train and val series of every run, and prints a one-line summary per series (last value, best).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "logs", nargs="+", help="work dirs or log.jsonl files (several runs share the panels)"
    )
    parser.add_argument("--keys", nargs="+", default=["loss"], help="logged keys to plot (default: loss)")
    parser.add_argument("--out", default="curves.png", help="PNG to write (default: curves.png)")
    parser.add_argument("--title", default="", help="figure title")


def _log_path(arg: str) -> Path:
    from masklab.errors import DataError

    path = Path(arg)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.is_file():
        raise DataError(f"{arg}: no log.jsonl found (give a work dir or a log.jsonl file)")
    return path


def _check_out(arg: str) -> Path:
    """``--out`` once it can be written as a figure: checked before the logs are read."""
    from matplotlib.figure import Figure

    from masklab.cli.output import check_output_file
    from masklab.errors import ConfigError

    out = check_output_file(arg, "--out", "curves.png")
    kinds = Figure().canvas.get_supported_filetypes()
    suffix = out.suffix.lstrip(".").lower()
    if suffix and suffix not in kinds:
        raise ConfigError(
            f"--out {out}: cannot write a .{suffix} figure; use one of "
            + ", ".join(f".{k}" for k in sorted(kinds))
        )
    return out


def run(args: argparse.Namespace) -> int:
    from masklab.visualization.plots import extract_series, plot_curves, read_log

    out_path = _check_out(args.out)
    keys = list(dict.fromkeys(args.keys))  # a key given twice is one panel
    paths = [_log_path(arg) for arg in args.logs]
    # Each run is named in the legend by its folder; by its path where two folders share a name.
    labels = [p.parent.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p.parent if p.name == "log.jsonl" else p) for p in paths]
    series = []
    for path, label in zip(paths, labels, strict=True):
        run_series = extract_series(read_log(path), keys, source=str(path))
        if len(paths) > 1:
            for s in run_series:
                s.mode = f"{label} {s.mode}"
        series.extend(run_series)
    for s in series:
        lower_better = s.key.startswith("loss") or s.key in ("time", "data_time")
        best = min(s.values) if lower_better else max(s.values)
        print(f"{s.mode} {s.key}: {len(s.values)} points, last {s.values[-1]:.4g}, best {best:.4g}")
    out = plot_curves(series, out_path, title=args.title)
    print(f"curves written to {out}")
    return 0
