"""Figures from numbers: training curves from ``log.jsonl`` and confusion matrices.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no ``pyplot``), so plotting never
touches global state, needs no display and is safe inside a training process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from masklab.errors import DataError


@dataclass
class Series:
    """One logged scalar over iterations.

    Attributes:
        key: the log key (``loss``, ``mIoU``, ...).
        mode: ``train`` or ``val`` (the record's ``mode``).
        iterations: x values, increasing.
        values: y values, one per iteration.
    """

    key: str
    mode: str
    iterations: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def read_log(path: str | Path) -> list[dict[str, object]]:
    """The records of a ``log.jsonl``; a record logged again for the same (mode, iteration) by a
    resumed run replaces the earlier one, so curves do not zig-zag after a resume.

    Raises:
        DataError: the file is missing or a line is not a JSON object (naming the line).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: log file not found")
    records: dict[tuple[str, int], dict[str, object]] = {}
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{lineno}: not a JSON record ({exc.msg})") from None
        if not isinstance(rec, dict) or "iteration" not in rec:
            raise DataError(f"{p}:{lineno}: expected a JSON object with an 'iteration' key")
        records[(str(rec.get("mode", "train")), int(rec["iteration"]))] = rec
    return [records[k] for k in sorted(records, key=lambda k: (k[1], k[0]))]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def extract_series(
    records: Sequence[dict[str, object]], keys: Sequence[str], source: str = "log"
) -> list[Series]:
    """One :class:`Series` per (key, mode) that has at least one finite numeric value.

    Raises:
        DataError: a requested key has no finite value in any record (the message says whether it
            is logged with only NaN / null values, or lists the keys that have values); ``source``
            (the log file) starts the message.
    """
    out: list[Series] = []
    for key in keys:
        by_mode: dict[str, Series] = {}
        for rec in records:
            value = rec.get(key)
            if _finite(value):
                mode = str(rec.get("mode", "train"))
                s = by_mode.setdefault(mode, Series(key, mode))
                s.iterations.append(int(rec["iteration"]))  # type: ignore[call-overload]
                s.values.append(float(value))
        if not by_mode:
            if any(key in r for r in records):
                raise DataError(
                    f"{source}: key {key!r} is logged but never with a finite value (NaN or null)"
                )
            known = sorted({k for r in records for k, v in r.items() if _finite(v)} - {"iteration"})
            raise DataError(f"{source}: no values for key {key!r}; logged keys: {', '.join(known) or 'none'}")
        out.extend(by_mode.values())
    return out


def plot_curves(series: Sequence[Series], out: str | Path, title: str = "") -> Path:
    """One panel per key (train and val of a key share a panel) saved as a PNG; returns its path."""
    keys = list(dict.fromkeys(s.key for s in series))
    fig = Figure(figsize=(6.4, 3.2 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        for s in series:
            if s.key == key:
                marker = "o" if s.mode == "val" or len(s.values) == 1 else None
                ax.plot(s.iterations, s.values, marker=marker, label=f"{s.mode} {key}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], out: str | Path, normalize: bool = True, title: str = ""
) -> Path:
    """Draw a (C, C) matrix (rows: ground truth, columns: prediction) as a PNG.

    With ``normalize`` each row is divided by its total (recall per class; empty rows stay 0) and
    cells are annotated in percent; otherwise raw pixel counts are shown.
    """
    m = np.asarray(matrix, dtype=np.float64)
    shown = row_normalize(m) * 100 if normalize else m
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2), 30.0)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=100 if normalize else None)
    fig.colorbar(image, ax=ax, label="% of ground-truth pixels" if normalize else "pixels")
    ax.set_xticks(range(n), labels=class_names, rotation=90)
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if n <= 30:  # annotations become unreadable beyond that
        top = shown.max() if shown.size else 0
        for (r, c), v in np.ndenumerate(shown):
            text = f"{v:.0f}" if normalize else f"{int(v)}"
            ax.text(
                c, r, text, ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black"
            )
    ax.set_title(title or "confusion matrix")
    return _save(fig, out)


def row_normalize(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; all-zero rows stay zero."""
    m = np.asarray(matrix, dtype=np.float64)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def _save(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` atomically (a failed write leaves no partial file and keeps an older one); the
    format follows ``out``'s extension (PNG when it has none)."""
    from masklab.atomic_files import atomic_path

    path = Path(out)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    return path
