"""Data checks for label-map datasets: out-of-range labels (per-split histogram), unreadable
images, and ``reduce_zero_label`` on a binary dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from masklab.doctor.context import DoctorContext, Unavailable
from masklab.doctor.finding import Finding, error, ok, warn
from masklab.doctor.registry import register_check
from masklab.errors import DataError


def _label_items(ds: Any) -> list[tuple[Path, Path]] | None:
    """``(image, label)`` pairs of a folder-style dataset, or None for other datasets."""
    items = getattr(ds, "items", None)
    if not isinstance(items, list) or not items or not isinstance(items[0], tuple):
        return None
    return items


def _limited(items: list[Any], max_files: int) -> list[Any]:
    return items if max_files <= 0 else items[:max_files]


def _build_failure(ctx: DoctorContext, check: str, split: str) -> Finding | None:
    return ctx.dataset_failure(split, check, "fix the dataset key, file or path named here")


def _valid(label: int, meta: Any) -> bool:
    return 0 <= label < meta.num_classes or label == meta.ignore_index


@register_check("data", "labels")
def check_label_values(ctx: DoctorContext) -> list[Finding]:
    """Every stored label, after reduce_zero_label/label_map, is a class id or ignore_index."""
    from masklab.data.datasets.semantic import label_lut
    from masklab.data.io import read_label

    out: list[Finding] = []
    for split in ctx.splits:
        name = f"data.labels[{split}]"
        failure = _build_failure(ctx, name, split)
        if failure is not None:
            out.append(failure)
            continue
        ds = ctx.dataset(split)
        items = _label_items(ds)
        if items is None:
            continue
        meta = ds.metainfo
        lut = label_lut(
            getattr(ds, "reduce_zero_label", False), getattr(ds, "label_map", None), meta.ignore_index
        )
        hist: Counter[int] = Counter()
        bad: list[str] = []
        unreadable: list[str] = []
        broken: list[Path] = []
        for _, seg in _limited(items, ctx.max_files):
            try:
                raw = read_label(seg)
            except DataError as exc:
                unreadable.append(str(exc))
                broken.append(seg)
                continue
            values, counts = torch.unique(raw, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                hist[int(lut[v]) if v <= 255 else v] += c
            wrong = [v for v in values.tolist() if v > 255 or not _valid(int(lut[v]), meta)]
            if wrong:
                bad.append(f"{seg}: stored values {wrong}")
                broken.append(seg)
        ctx.report_files(broken, name)  # a sample that does not load because of them is this row's
        shown = ", ".join(f"{v}:{c}" for v, c in sorted(hist.items()))
        if unreadable:
            out.append(
                error(
                    name,
                    f"{len(unreadable)} unreadable label maps, first: {unreadable[0]}",
                    "re-export or remove these files",
                )
            )
        if bad:
            out.append(
                error(
                    name,
                    f"{len(bad)} label maps hold values outside [0, {meta.num_classes}) and not ignore "
                    f"{meta.ignore_index}; first: {bad[0]}; histogram {{{shown}}}",
                    "remap the labels to class ids, set label_map, or fix num_classes/classes",
                )
            )
        if not bad and not unreadable:
            out.append(ok(name, f"{len(_limited(items, ctx.max_files))} label maps; histogram {{{shown}}}"))
    return out


@register_check("data", "images")
def check_images_readable(ctx: DoctorContext) -> list[Finding]:
    """Every image of a folder-style dataset decodes and has its label map's size."""
    from PIL import Image

    from masklab.data.io import read_image

    out: list[Finding] = []
    for split in ctx.splits:
        try:
            items = _label_items(ctx.dataset(split))
        except Unavailable:
            continue  # reported by data.labels
        if items is None:
            continue
        problems: list[str] = []
        broken: list[Path] = []
        for img, seg in _limited(items, ctx.max_files):
            try:
                pixels = read_image(img)
            except DataError as exc:
                problems.append(str(exc))
                broken.append(img)
                continue
            try:
                with Image.open(seg) as lab:
                    size = (lab.height, lab.width)
            except OSError:
                continue  # reported by data.labels
            if size != tuple(pixels.shape[-2:]):
                problems.append(
                    f"{seg}: label size {size} differs from image {img} size {tuple(pixels.shape[-2:])}"
                )
                broken.append(seg)
        name = f"data.images[{split}]"
        ctx.report_files(broken, name)
        if problems:
            out.append(
                error(
                    name,
                    f"{len(problems)} bad images, first: {problems[0]}",
                    "re-export or remove these files",
                )
            )
        else:
            out.append(
                ok(name, f"{len(_limited(items, ctx.max_files))} images decode and match their label sizes")
            )
    return out


@register_check("data", "reduce_zero_label")
def check_reduce_zero_label(ctx: DoctorContext) -> list[Finding]:
    """``reduce_zero_label`` on a binary dataset turns one of the two classes into ignore."""
    out: list[Finding] = []
    for split in ctx.splits:
        try:
            ds = ctx.dataset(split)
        except Unavailable:
            continue
        if not getattr(ds, "reduce_zero_label", False):
            continue
        name = f"data.reduce_zero_label[{split}]"
        n = ds.metainfo.num_classes
        if n <= 2:
            out.append(
                error(
                    name,
                    f"dataset.{split}.reduce_zero_label is true with {n} classes: label 0 becomes ignore and a binary "
                    "task loses one of its two classes",
                    "set reduce_zero_label: false (0 is a real class here)",
                )
            )
        else:
            out.append(
                warn(
                    name,
                    "reduce_zero_label is on: stored label 0 is ignored, class ids shift by one",
                    "keep it only if 0 means 'unlabelled' in your files (as in ADE20K)",
                )
            )
    return out
