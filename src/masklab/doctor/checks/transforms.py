"""Transform checks: after the train pipeline, boxes are still the masks' bounding boxes, instance
pixels agree with the semantic map, and the maps line up with the image; a picture grid of the
samples goes into the report so a person can see it."""

from __future__ import annotations

from typing import Any

import torch

from masklab.doctor.context import DoctorContext, load_sample
from masklab.doctor.finding import Finding, error, ok, skipped
from masklab.doctor.registry import register_check
from masklab.errors import MasklabError
from masklab.structures import Sample


def sample_problems(sample: Sample, num_classes: int, ignore_index: int) -> list[str]:
    """What is inconsistent in one transformed sample (empty when all agrees)."""
    problems: list[str] = []
    name = sample.meta.file_name or f"image {sample.meta.image_id}"
    h, w = sample.image.shape[-2:]
    if sample.semantic is not None:
        if tuple(sample.semantic.shape[-2:]) != (h, w):
            problems.append(f"{name}: semantic map {tuple(sample.semantic.shape)} vs image {(h, w)}")
        else:
            bad = sample.semantic[(sample.semantic >= num_classes) & (sample.semantic != ignore_index)]
            if bad.numel():
                problems.append(f"{name}: semantic value {int(bad[0])} after the pipeline")
    inst = sample.instances
    if inst is not None and len(inst):
        from masklab.structures.instances import masks_to_boxes

        if tuple(inst.masks.shape[-2:]) != (h, w):
            problems.append(f"{name}: instance masks {tuple(inst.masks.shape[-2:])} vs image {(h, w)}")
            return problems
        tight = masks_to_boxes(inst.masks)
        diff = (tight - inst.boxes.float()).abs().amax(dim=1)
        for i in torch.nonzero(diff > 1.0).flatten().tolist()[:1]:
            problems.append(
                f"{name}: instance {i} box {[round(v, 1) for v in inst.boxes[i].tolist()]} vs mask box {tight[i].tolist()}"
            )
        empty = ~inst.masks.flatten(1).any(dim=1)
        if bool(empty.any()):
            problems.append(f"{name}: {int(empty.sum())} instances with an empty mask after the pipeline")
        if sample.semantic is not None and tuple(sample.semantic.shape[-2:]) == (h, w):
            for i in range(len(inst)):
                if bool(inst.ignore[i]):
                    continue
                sem = sample.semantic[inst.masks[i]]
                sem = sem[sem != ignore_index]
                if sem.numel() and float((sem == inst.labels[i]).float().mean()) < 0.5:
                    problems.append(
                        f"{name}: instance {i} (label {int(inst.labels[i])}) lies on semantic "
                        f"label {int(sem.mode().values)}"
                    )
                    break
    return problems


def render_sample(sample: Sample, palette: Any, ignore_index: int) -> Any:
    """The sample's image with its semantic map blended in and instance boxes drawn (H, W, 3 uint8)."""
    import cv2
    import numpy as np

    from masklab.visualization.overlay import overlay_semantic, to_hwc_uint8

    canvas = to_hwc_uint8(sample.image)
    if sample.semantic is not None and tuple(sample.semantic.shape) == tuple(sample.image.shape[-2:]):
        canvas = overlay_semantic(sample.image, sample.semantic, palette, 0.5, ignore_index)
    canvas = np.ascontiguousarray(canvas)
    inst = sample.instances
    if inst is not None:
        for i in range(len(inst)):
            colour = tuple(int(c) for c in palette[int(inst.labels[i]) % len(palette)])
            m = inst.masks[i].numpy().astype(np.uint8)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, colour, 1)
            x1, y1, x2, y2 = (int(round(v)) for v in inst.boxes[i].tolist())
            cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (255, 255, 255), 1)
    return canvas


def save_grid(tiles: list[Any], path: Any, columns: int = 4) -> None:
    """Write the tiles (padded to the largest) as one PNG grid."""
    import numpy as np

    from masklab.data.io import write_png_atomic

    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    grid = np.zeros((rows * (th + 2), min(columns, len(tiles)) * (tw + 2), 3), dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * (th + 2) : r * (th + 2) + t.shape[0], c * (tw + 2) : c * (tw + 2) + t.shape[1]] = t
    write_png_atomic(path, grid)


@register_check("transforms", "train_pipeline")
def check_train_pipeline(ctx: DoctorContext) -> list[Finding]:
    """Draw samples through the train pipeline, check geometry agreement, render the grid.

    A sample that does not load is a data problem: skipped when a data row reports its file,
    otherwise reported here as one (not as a transform moving masks apart).
    """
    name = "transforms.train_pipeline"
    failure = ctx.dataset_failure("train", name, "fix the dataset first (see data.*)")
    if failure is not None:
        return [failure]
    ds = ctx.dataset("train")
    meta = getattr(ds, "metainfo", None)
    if meta is None:  # MAL's box crops: no maps or masks for a pipeline to move apart
        return [
            skipped(
                name, f"skipped: dataset.train ({type(ds).__name__}) has no label maps or masks to compare"
            )
        ]
    n = min(ctx.samples, len(ds))
    torch.manual_seed(ctx.rc.runtime.seed)
    problems: list[str] = []
    unloadable: list[str] = []
    reported: dict[str, int] = {}  # data rows that report the files of samples that do not load
    tiles = []
    for i in range(n):
        try:
            sample = load_sample(ds, "train", i)  # a crash names the image and its annotations
        except MasklabError as exc:
            row = ctx.reporter_of(str(exc))
            if row is not None:
                reported[row] = reported.get(row, 0) + 1
            else:
                unloadable.append(str(exc))
                ctx.first_report(str(exc), name)  # the model rows then name this row
            continue
        problems.extend(sample_problems(sample, meta.num_classes, meta.ignore_index))
        tiles.append(render_sample(sample, meta.palette, meta.ignore_index))
    if tiles:
        path = ctx.work_dir / "train_pipeline.png"
        save_grid(tiles, path)
        ctx.pictures.append(path)
    known = sum(reported.values())
    rows = ", ".join(sorted(reported))
    note = f"; {known} samples that do not load are reported by {rows}" if known else ""
    if problems:
        return [
            error(
                name,
                f"{len(problems)} problems in {n - known - len(unloadable)} samples, first: {problems[0]}{note}",
                "a transform moves masks/boxes/maps apart: see train_pipeline.png and fix the pipeline",
            )
        ]
    if unloadable:
        return [
            error(
                name,
                f"{len(unloadable)} of {n} samples do not load, first: {unloadable[0]}{note}",
                "a data problem, not a transform one: fix or remove the file named here",
            )
        ]
    agree = "boxes equal mask boxes, maps match image size and labels (grid: train_pipeline.png)"
    if known:
        rest = f"; the other {n - known}: {agree}" if n > known else ""
        return [skipped(name, f"skipped: {known} of {n} samples do not load (see {rows}){rest}")]
    return [ok(name, f"{n} samples: {agree}")]
