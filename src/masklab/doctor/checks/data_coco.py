"""Data checks for COCO instance files (``masklab.data.coco``): unknown categories and attribute
values, empty/degenerate masks and boxes, RLEs that do not decode, boxes outside the image,
duplicate ids, unreadable images.

The file is scanned entry by entry (not through the loader, which stops at the first problem), so
the report counts every problem and names the first of each kind. Masks are rasterised at their
image's size (zero-area non-crowd masks, corrupt RLEs) for the images ``--max-files`` lets through.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from masklab.doctor.context import DoctorContext
from masklab.doctor.finding import Finding, error, ok, warn
from masklab.doctor.registry import register_check
from masklab.errors import DataError


def coco_files(ctx: DoctorContext) -> list[tuple[str, Path, Path | None]]:
    """``(split, ann_file, img_dir)`` for every split whose dataset node names an ``ann_file``."""
    out = []
    shared_root = ctx.rc.dataset.get("root") if ctx.rc.dataset is not None else None
    for split in ctx.splits:
        node = ctx.rc.dataset[split]
        ann = node.get("ann_file") if hasattr(node, "get") else None
        if isinstance(ann, str):
            img_dir = node.get("img_dir")
            # Relative paths resolve against the split's ``root`` or ``dataset.root``, as the dataset does.
            root = node.get("root", shared_root)
            base = Path(root) if isinstance(root, str) else Path()
            out.append((split, base / ann, base / img_dir if isinstance(img_dir, str) else None))
    return out


def scan_coco(data: Any, where: str, max_images: int = 0) -> dict[str, list[str]]:
    """Problems of a parsed COCO dict by kind, each a list of one-line descriptions.

    Every annotation is checked from its JSON; the masks (area, RLE decoding) of the annotations
    on the first ``max_images`` images in file order (0 = all) are also rasterised at their
    image's size, as the dataset decodes them.
    """
    from masklab.data.coco.load import parse_attribute_metas

    found: dict[str, list[str]] = defaultdict(list)
    images = {im.get("id"): im for im in data.get("images", []) if isinstance(im, dict)}
    for iid, n in Counter(im.get("id") for im in data.get("images", []) if isinstance(im, dict)).items():
        if n > 1:
            found["duplicate_id"].append(f"image id={iid} appears {n} times")
    cats = {c.get("id") for c in data.get("categories", []) if isinstance(c, dict)}
    try:
        attrs = {a.name: a for a in parse_attribute_metas(data.get("attributes") or [], where)}
    except DataError as exc:
        found["attribute"].append(str(exc))
        attrs = {}
    listed = [im.get("id") for im in data.get("images", []) if isinstance(im, dict)]
    measured = set(listed if max_images <= 0 else listed[:max_images])
    seen: set[Any] = set()
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict):
            found["structure"].append(f"annotation {ann!r} is not an object")
            continue
        aid = ann.get("id")
        here = f"annotation id={aid}"
        if aid in seen:
            found["duplicate_id"].append(f"{here} appears more than once")
        seen.add(aid)
        if ann.get("category_id") not in cats:
            found["category"].append(
                f"{here}: category_id {ann.get('category_id')!r} is not among the categories"
            )
        image = images.get(ann.get("image_id"))
        if image is None:
            found["image_ref"].append(f"{here}: image_id {ann.get('image_id')!r} is not among the images")
        _scan_attributes(ann, attrs, here, found)
        _scan_geometry(ann, image, here, found)
        if image is not None and ann.get("image_id") in measured:
            _scan_mask(ann, image, here, found)
    return found


def _scan_attributes(
    ann: dict[str, Any], attrs: dict[str, Any], here: str, found: dict[str, list[str]]
) -> None:
    values = ann.get("attributes") or {}
    if not isinstance(values, dict):
        found["attribute"].append(f"{here}: attributes is {values!r}; expected an object")
        return
    for name, value in values.items():
        meta = attrs.get(name)
        if meta is None:
            found["attribute"].append(
                f"{here}: attribute {name!r} is not declared in the file's 'attributes'"
            )
        elif value is None or value == -1:
            continue
        elif isinstance(value, str):
            if value not in meta.values:
                found["attribute"].append(f"{here}: {name}={value!r} is not one of {list(meta.values)}")
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < meta.num_values:
            found["attribute"].append(f"{here}: {name}={value!r} outside [0, {meta.num_values})")


def _scan_geometry(
    ann: dict[str, Any], image: dict[str, Any] | None, here: str, found: dict[str, list[str]]
) -> None:
    bbox = ann.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            found["degenerate"].append(f"{here}: bbox {bbox!r} is not [x, y, w, h]")
            return
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            found["degenerate"].append(f"{here}: bbox {bbox} has non-positive width/height")
        elif image is not None:
            W, H = image.get("width", 0), image.get("height", 0)
            if x < 0 or y < 0 or x + w > W + 0.5 or y + h > H + 0.5:
                found["outside"].append(f"{here}: bbox {bbox} leaves the {W}x{H} image")
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        bad = [k for k, p in enumerate(segm) if not _is_polygon(p)]
        if not segm or bad:
            which = f"segmentation[{bad[0]}]" if bad else "segmentation"
            found["degenerate"].append(f"{here}: {which} is not a polygon of 3+ finite points")
    elif segm is not None and not isinstance(segm, dict):
        found["degenerate"].append(f"{here}: segmentation is {type(segm).__name__}; expected polygons or RLE")


def _is_polygon(p: Any) -> bool:
    return (
        isinstance(p, list)
        and len(p) >= 6
        and len(p) % 2 == 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in p)
    )


def _scan_mask(ann: dict[str, Any], image: dict[str, Any], here: str, found: dict[str, list[str]]) -> None:
    """Rasterise the annotation's mask as the dataset does: RLEs must decode at the image's size,
    and a non-crowd mask must cover at least one pixel of the image."""
    from pycocotools import mask as mask_utils

    from masklab.data.coco.rle import segmentation_to_rle

    segm, H, W = ann.get("segmentation"), image.get("height"), image.get("width")
    if not (isinstance(H, int) and isinstance(W, int) and H > 0 and W > 0):
        return
    if isinstance(segm, list):
        if not segm or not all(_is_polygon(p) for p in segm):
            return  # reported by _scan_geometry
        area = float(mask_utils.area(segmentation_to_rle(segm, H, W)))
        what = f"segmentation polygons have zero area inside the {W}x{H} image"
    elif isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not isinstance(size, list) or size != [H, W]:
            found["rle"].append(f"{here}: segmentation.size {size!r} is not the image's [{H}, {W}]")
            return
        if isinstance(counts, list) and (
            not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != H * W
        ):
            found["rle"].append(f"{here}: segmentation.counts (uncompressed) do not sum to h*w={H * W}")
            return
        if not isinstance(counts, str | list):
            found["rle"].append(
                f"{here}: segmentation.counts is {type(counts).__name__}; expected str or list"
            )
            return
        if isinstance(counts, str):
            # pycocotools' decode() can crash the process on a corrupt string (invalid free): the
            # loader's pure-NumPy check reads it first, as the dataset does.
            from masklab.data.coco.rle_check import check_rle_strings

            problems, areas = check_rle_strings([counts], [(H, W)])
            if problems[0] is not None:
                shown = repr(counts) if len(repr(counts)) <= 26 else repr(counts)[:24] + "..."
                found["rle"].append(f"{here}: segmentation.counts {shown} does not decode ({problems[0]})")
                return
            area = float(areas[0])
        else:
            area = float(mask_utils.decode(segmentation_to_rle(segm, H, W)).sum())
        what = "segmentation RLE has zero area (all zeros)"
    else:
        return
    if area <= 0 and not ann.get("iscrowd"):
        found["degenerate"].append(f"{here}: {what}")


_ADVICE = {
    "category": ("error", "add the category to 'categories' or fix the annotation's category_id"),
    "attribute": ("error", "declare the attribute/value in the top-level 'attributes' or fix the annotation"),
    "image_ref": ("error", "add the image entry or drop the annotation"),
    "duplicate_id": ("error", "give every image and annotation a unique id"),
    "degenerate": (
        "error",
        "drop these annotations, or set dataset.{split}.on_bad: skip (the loader raises a DataError on them)",
    ),
    "rle": ("error", "re-encode these masks at the image's size: the dataset cannot decode them"),
    "outside": ("warn", "clip the boxes to the image; check the x, y, w, h order"),
    "structure": ("error", "fix the JSON structure"),
}


@register_check("data", "coco")
def check_coco_annotations(ctx: DoctorContext) -> list[Finding]:
    """Scan each split's COCO file for every annotation-level problem."""
    from masklab.data.coco.load import read_json

    out: list[Finding] = []
    for split, ann_file, img_dir in coco_files(ctx):
        name = f"data.coco[{split}]"
        try:
            data = read_json(ann_file)
        except DataError as exc:
            out.append(error(name, str(exc), "fix or regenerate the annotation file"))
            ctx.report_files([ann_file], name)
            continue
        if not isinstance(data, dict):
            out.append(error(name, f"{ann_file}: top level is not an object", "fix the annotation file"))
            ctx.report_files([ann_file], name)
            continue
        found = scan_coco(data, str(ann_file), ctx.max_files)
        for kind, items in found.items():
            status, advice = _ADVICE[kind]
            make = error if status == "error" else warn
            if status == "error":  # the dataset refuses the file: the rows needing it name this one
                ctx.report_files([ann_file], f"{name}.{kind}")
            out.append(
                make(
                    f"{name}.{kind}",
                    f"{ann_file}: {len(items)} problems, first: {items[0]}",
                    advice.format(split=split),
                )
            )
        images, broken = _check_coco_images(name, data, img_dir, ctx.max_files)
        out.extend(images)
        ctx.report_files(broken, f"{name}.images")
        if not found:
            n, m = len(data.get("annotations", [])), len(data.get("images", []))
            if ctx.max_files > 0 and ctx.max_files < m:
                m = ctx.max_files
                scope = f"masks decoded on the first {m} images"
            else:
                scope = "masks decoded"
            out.append(
                ok(name, f"{ann_file}: {n} annotations, categories/attributes/geometry consistent, {scope}")
            )
    return out


def _check_coco_images(
    name: str, data: dict[str, Any], img_dir: Path | None, max_images: int = 0
) -> tuple[list[Finding], list[Path]]:
    """The ``<name>.images`` error row (when any image is bad) and the bad image files."""
    from masklab.data.io import read_image

    if img_dir is None:
        return [], []
    bad: list[str] = []
    broken: list[Path] = []
    images = data.get("images", [])
    for im in images if max_images <= 0 else images[:max_images]:
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str):
            continue
        try:
            pixels = read_image(img_dir / im["file_name"])
        except DataError as exc:
            bad.append(str(exc))
            broken.append(img_dir / im["file_name"])
            continue
        if tuple(pixels.shape[-2:]) != (im.get("height"), im.get("width")):
            broken.append(img_dir / im["file_name"])
            bad.append(
                f"{img_dir / im['file_name']}: size {tuple(pixels.shape[-2:])} but the JSON says "
                f"{im.get('height')}x{im.get('width')}"
            )
    if bad:
        return [
            error(
                f"{name}.images",
                f"{len(bad)} unreadable or mis-sized images, first: {bad[0]}",
                "re-export the images or fix height/width in the JSON",
            )
        ], broken
    return [], []
