"""Read and validate a COCO instances JSON file into typed records.

Every malformed entry is reported as a one-line :class:`DataError` naming the file, the
annotation id and the field. With ``on_bad="skip"`` the annotation-level problems a user usually
wants to drop instead (dangling image ids, unknown categories, bad attributes, degenerate
geometry, invalid RLE, empty masks of non-crowd instances, duplicate ids) are skipped and counted
in :attr:`CocoFile.skipped`; structural problems (truncated JSON, duplicate image or category ids
or names, missing keys, a non-0/1 ``iscrowd``) always raise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from operator import mul, sub
from pathlib import Path
from typing import Any, Literal

from masklab.data.coco.gc_pause import gc_paused
from masklab.data.coco.records import (
    CocoAnnotation,
    CocoCategory,
    CocoFile,
    CocoImage,
    CocoSkipCounts,
    Segmentation,
)
from masklab.data.coco.rle import segmentation_area, segmentation_bbox
from masklab.data.coco.rle_check import check_rle_strings, precheck_rle_counts
from masklab.data.meta import AttributeMeta
from masklab.errors import DataError

OnBad = Literal["error", "skip"]


class _Skip(Exception):
    """An annotation-level problem; ``reason`` is a :class:`CocoSkipCounts` field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; missing or truncated files are one-line :class:`DataError` s."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        with p.open("rb") as fh, gc_paused():
            return json.load(fh)
    except json.JSONDecodeError as exc:
        # exc.msg may end in "starting at" (e.g. "Unterminated string starting at"): say where apart.
        raise DataError(
            f"{p}: not valid JSON (truncated or corrupt?): {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason})") from None


def load_coco(path: str | Path, *, attributes_required: bool = False, on_bad: OnBad = "error") -> CocoFile:
    """Read a COCO instances file (with optional attributes) and validate every entry.

    Args:
        path: the JSON file.
        attributes_required: every annotation must label every attribute of the metadata.
        on_bad: ``"error"`` raises on the first bad annotation; ``"skip"`` drops it and counts
            it by reason in ``CocoFile.skipped``.

    Returns:
        The validated :class:`CocoFile`.

    Raises:
        DataError: naming the file, the entry and the field that is wrong.
    """
    if on_bad not in ("error", "skip"):
        raise DataError(f"load_coco: on_bad={on_bad!r}; expected 'error' or 'skip'")
    data = read_json(path)
    with gc_paused():
        return parse_coco(data, str(path), attributes_required=attributes_required, on_bad=on_bad)


def parse_coco(
    data: Any, where: str = "<memory>", *, attributes_required: bool = False, on_bad: OnBad = "error"
) -> CocoFile:
    """Validate an already-parsed COCO dict (see :func:`load_coco`); ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise DataError(
            f"{where}: top level is {type(data).__name__}; expected a JSON object with images/annotations/categories"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{where}: '{key}' is missing or not a list")
    images = _parse_images(data["images"], where)
    categories = _parse_categories(data["categories"], where)
    attributes = parse_attribute_metas(data.get("attributes") or [], where)
    img_by_id = {im.id: im for im in images}
    cat_ids = {c.id for c in categories}
    attr_by_name = {a.name: a for a in attributes}
    counts = dict.fromkeys(CocoSkipCounts().as_dict(), 0)
    seen: set[int] = set()
    anns: list[CocoAnnotation] = []
    # RLE strings are checked in one batch before pycocotools ever reads one (it trusts them).
    rle_checks = precheck_rle_counts(data["annotations"])
    for i, raw in enumerate(data["annotations"]):
        try:
            ann = _parse_annotation(
                raw, i, where, img_by_id, cat_ids, attr_by_name, attributes_required, rle_checks.get(i)
            )
            if ann.id in seen:
                raise _Skip(
                    "duplicate_id",
                    f"{where}: annotation id={ann.id}: field 'id' duplicates an earlier annotation",
                )
        except _Skip as bad:
            if on_bad == "error":
                raise DataError(str(bad)) from None
            counts[bad.reason] += 1
            continue
        seen.add(ann.id)
        anns.append(ann)
    return CocoFile(where, images, tuple(anns), categories, attributes, CocoSkipCounts(**counts))


def _int_field(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    # bool is an int subclass; a JSON true is never a valid id.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise DataError(f"{where}: field '{key}' is {value!r}; expected an integer")
    return int(value)


def _parse_images(raw: list[Any], where: str) -> tuple[CocoImage, ...]:
    images: list[CocoImage] = []
    seen: set[int] = set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise DataError(f"{where}: images[{i}] is {type(entry).__name__}; expected an object")
        iid = _int_field(entry, "id", f"{where}: images[{i}]")
        here = f"{where}: image id={iid}"
        if iid in seen:
            raise DataError(f"{here}: field 'id' duplicates an earlier image")
        seen.add(iid)
        h, w = _int_field(entry, "height", here), _int_field(entry, "width", here)
        if h <= 0 or w <= 0:
            raise DataError(f"{here}: fields 'height'/'width' are {h}x{w}; expected positive sizes")
        name = entry.get("file_name", "")
        if not isinstance(name, str):
            raise DataError(f"{here}: field 'file_name' is {name!r}; expected a string")
        images.append(CocoImage(iid, name, h, w))
    return tuple(images)


def _parse_categories(raw: list[Any], where: str) -> tuple[CocoCategory, ...]:
    cats: list[CocoCategory] = []
    seen: set[int] = set()
    names: dict[str, int] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise DataError(f"{where}: categories[{i}] is {type(entry).__name__}; expected an object")
        cid = _int_field(entry, "id", f"{where}: categories[{i}]")
        if cid in seen:
            raise DataError(f"{where}: category id={cid}: field 'id' duplicates an earlier category")
        seen.add(cid)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise DataError(
                f"{where}: category id={cid}: field 'name' is {name!r}; expected a non-empty string"
            )
        if name in names:
            # Two labels with one name: metrics, reports and class subsets could not tell them apart.
            raise DataError(
                f"{where}: category id={cid}: field 'name' {name!r} is also the name of category "
                f"id={names[name]}; expected unique category names"
            )
        names[name] = cid
        cats.append(
            CocoCategory(cid, name, str(entry.get("supercategory", "")), bool(entry.get("isthing", True)))
        )
    return tuple(cats)


def parse_attribute_metas(raw: Any, where: str) -> tuple[AttributeMeta, ...]:
    """Parse the top-level ``attributes: [{name, values}]`` list."""
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'attributes' is {type(raw).__name__}; expected a list of {{name, values}}")
    metas: list[AttributeMeta] = []
    for i, entry in enumerate(raw):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("values"), list)
        )
        if not ok or not entry["values"]:
            raise DataError(
                f"{where}: attributes[{i}] is {entry!r}; expected {{'name': str, 'values': [non-empty list]}}"
            )
        if any(m.name == entry["name"] for m in metas):
            raise DataError(f"{where}: attributes[{i}]: name {entry['name']!r} is declared twice")
        values = tuple(str(v) for v in entry["values"])
        repeated = next((v for k, v in enumerate(values) if v in values[:k]), None)
        if repeated is not None:
            # Annotations may give a value by name: a repeated name would be ambiguous.
            raise DataError(
                f"{where}: attributes[{i}] ({entry['name']!r}): value {repeated!r} is listed twice in "
                f"'values' {list(values)}; expected unique value names"
            )
        metas.append(AttributeMeta(entry["name"], values))
    return tuple(metas)


def _parse_annotation(
    raw: Any,
    index: int,
    where: str,
    images: Mapping[int, CocoImage],
    cat_ids: set[int],
    attrs: Mapping[str, AttributeMeta],
    attributes_required: bool,
    rle_check: tuple[str | None, int] | None = None,
) -> CocoAnnotation:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: annotations[{index}] is {type(raw).__name__}; expected an object")
    aid = _int_field(raw, "id", f"{where}: annotations[{index}]")
    here = f"{where}: annotation id={aid}"
    image_id = _int_field(raw, "image_id", here)
    category_id = _int_field(raw, "category_id", here)
    image = images.get(image_id)
    if image is None:
        raise _Skip(
            "dangling_image", f"{here}: field 'image_id' is {image_id}, which is not among the images"
        )
    if category_id not in cat_ids:
        raise _Skip(
            "unknown_category",
            f"{here}: field 'category_id' is {category_id}, which is not among the categories",
        )
    iscrowd = raw.get("iscrowd", 0)
    if type(iscrowd) not in (int, bool) or iscrowd not in (0, 1):
        # bool("0") is True: a string flag would silently turn every instance into a crowd region.
        raise DataError(f"{here}: field 'iscrowd' is {iscrowd!r}; expected 0 or 1 (an integer or boolean)")
    iscrowd = bool(iscrowd)
    segm = _check_segmentation(raw.get("segmentation"), image, here, rle_check)
    if segm is not None and not iscrowd:
        _check_not_empty(segm, image, here, rle_check)
    bbox = _check_bbox(raw.get("bbox"), segm, image, here)
    area = raw.get("area")
    if area is None:
        area = segmentation_area(segm, image.height, image.width) if segm is not None else bbox[2] * bbox[3]
    elif not isinstance(area, int | float) or isinstance(area, bool) or not math.isfinite(area) or area < 0:
        raise _Skip("bad_box", f"{here}: field 'area' is {area!r}; expected a non-negative number")
    values = parse_attribute_values(raw.get("attributes"), attrs, here, attributes_required)
    score = raw.get("score")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise _Skip(
            "bad_box", f"{here}: field 'score' is {score!r}; expected a finite number (detector confidence)"
        )
    return CocoAnnotation(
        aid,
        image_id,
        category_id,
        bbox,
        float(area),
        iscrowd,
        segm,
        values,
        None if score is None else float(score),
    )


def parse_attribute_values(
    raw: Any, attrs: Mapping[str, AttributeMeta], here: str, required: bool
) -> dict[str, int]:
    """Validate ``{name: value}`` (value id or value name; -1 / null = unlabelled) against the metadata."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _Skip(
            "bad_attribute", f"{here}: field 'attributes' is {raw!r}; expected an object {{name: value_id}}"
        )
    out: dict[str, int] = {}
    for name, value in raw.items():
        meta = attrs.get(name)
        if meta is None:
            known = ", ".join(attrs) or "none declared in the top-level 'attributes'"
            raise _Skip(
                "bad_attribute",
                f"{here}: field 'attributes.{name}' is not a declared attribute (known: {known})",
            )
        if value is None or value == -1:
            continue
        if isinstance(value, str):
            if value not in meta.values:
                raise _Skip(
                    "bad_attribute",
                    f"{here}: field 'attributes.{name}' is {value!r}; expected one of {list(meta.values)}",
                )
            out[name] = meta.values.index(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(meta.values):
            raise _Skip(
                "bad_attribute",
                f"{here}: field 'attributes.{name}' is {value!r}; expected a value id in [0, {len(meta.values)}) or -1",
            )
        out[name] = int(value)
    if required:
        missing = [n for n in attrs if n not in out]
        if missing:
            raise _Skip(
                "bad_attribute", f"{here}: field 'attributes' lacks {missing} (attributes_required=True)"
            )
    return out


def _check_segmentation(
    segm: Any, image: CocoImage, here: str, rle_check: tuple[str | None, int] | None
) -> Segmentation | None:
    if segm is None:
        return None
    if isinstance(segm, list):
        if not segm:
            raise _Skip("bad_segmentation", f"{here}: field 'segmentation' is an empty polygon list")
        for k, poly in enumerate(segm):
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            # One sum finds any inf/nan (it propagates) once the types are known to be numbers.
            ok = ok and set(map(type, poly)) <= _NUMBER_TYPES and math.isfinite(sum(poly))
            if not ok:
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                raise _Skip(
                    "bad_segmentation",
                    f"{here}: field 'segmentation[{k}]' is a degenerate polygon ({n} values); expected >= 6 finite numbers, even count",
                )
        return segm
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        h, w = image.height, image.width
        if list(size or []) != [h, w]:
            raise _Skip(
                "bad_segmentation",
                f"{here}: field 'segmentation.size' is {size!r}; expected [{h}, {w}] (the image's height, width)",
            )
        if isinstance(counts, str):
            problem = (rle_check or _check_one_rle(counts, h, w))[0]
            if problem is not None:
                raise _Skip(
                    "bad_segmentation",
                    f"{here}: field 'segmentation.counts' is not a valid compressed RLE of size [{h}, {w}]: {problem}",
                )
            return segm
        if not isinstance(counts, list) or not all(type(c) is int and c >= 0 for c in counts):
            raise _Skip(
                "bad_segmentation",
                f"{here}: field 'segmentation.counts' is malformed; expected an RLE string or a list of non-negative integers",
            )
        if sum(counts) != h * w:
            raise _Skip(
                "bad_segmentation",
                f"{here}: field 'segmentation.counts' sums to {sum(counts)}; expected {h * w} (h*w)",
            )
        return segm
    raise _Skip(
        "bad_segmentation", f"{here}: field 'segmentation' is {type(segm).__name__}; expected polygons or RLE"
    )


_NUMBER_TYPES = {int, float}


def _check_one_rle(counts: str, height: int, width: int) -> tuple[str | None, int]:
    problems, areas = check_rle_strings([counts], [(height, width)])
    return problems[0], int(areas[0])


def _check_not_empty(
    segm: Segmentation, image: CocoImage, here: str, rle_check: tuple[str | None, int] | None
) -> None:
    """A non-crowd instance whose mask has no pixel is a :class:`_Skip` ("empty_mask").

    Such an instance has no box and no area: it would train a query on nothing and count as a
    ground truth no prediction can match.
    """
    h, w = image.height, image.width
    if isinstance(segm, dict):
        counts = segm["counts"]
        if isinstance(counts, str):
            area = (rle_check or _check_one_rle(counts, h, w))[1]
        else:
            area = sum(counts[1::2])  # type: ignore[index]
        if area == 0:
            raise _Skip(
                "empty_mask",
                f"{here}: field 'segmentation' is an RLE without foreground pixels; expected a non-empty mask for a non-crowd instance",
            )
        return
    problem = _polygon_problem(segm, h, w)
    if problem is not None:
        raise _Skip(
            "empty_mask",
            f"{here}: field 'segmentation' {problem}; expected a polygon covering pixels of the {w}x{h} image",
        )


def _polygon_problem(polys: list[list[float]], height: int, width: int) -> str | None:
    """Why polygons cover no pixel, or None. Exact (rasterised) only for thin, tiny or clipped ones."""
    area = box_perimeter = 0.0
    all_outside = inside = True
    for poly in polys:
        xs, ys = poly[0::2], poly[1::2]
        xn, yn = xs[1:] + xs[:1], ys[1:] + ys[:1]
        area += abs(sum(map(mul, xs, yn)) - sum(map(mul, xn, ys))) / 2  # shoelace
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        box_perimeter += 2 * ((x1 - x0) + (y1 - y0))
        all_outside = all_outside and (x1 <= 0 or x0 >= width or y1 <= 0 or y0 >= height)
        inside = inside and x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
    if area == 0:
        return "has zero area (its points are collinear or repeated)"
    if all_outside:
        return "lies outside the image"
    # A convex shape with area / perimeter >= 1 holds a disk of radius >= 1, hence a pixel centre;
    # its perimeter is at most its box's. Anything thinner or smaller, or cut by the border, is
    # rasterised as the dataset does (rare: about the objects under 8x8 pixels).
    if inside and (area >= box_perimeter or area >= _perimeter(polys)):
        return None
    if segmentation_area(polys, height, width) == 0:
        return "covers no pixel (too thin or small, or outside the image)"
    return None


def _perimeter(polys: list[list[float]]) -> float:
    total = 0.0
    for poly in polys:
        xs, ys = poly[0::2], poly[1::2]
        total += sum(map(math.hypot, map(sub, xs[1:] + xs[:1], xs), map(sub, ys[1:] + ys[:1], ys)))
    return total


def _check_bbox(
    bbox: Any, segm: Segmentation | None, image: CocoImage, here: str
) -> tuple[float, float, float, float]:
    if bbox is None:
        if segm is None:
            raise _Skip(
                "bad_box", f"{here}: fields 'bbox' and 'segmentation' are both missing; expected at least one"
            )
        return segmentation_bbox(segm, image.height, image.width)
    ok = isinstance(bbox, list) and len(bbox) == 4
    ok = ok and all(type(v) in (int, float) and math.isfinite(v) for v in bbox)
    if not ok:
        raise _Skip("bad_box", f"{here}: field 'bbox' is {bbox!r}; expected [x, y, w, h] of 4 finite numbers")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise _Skip("bad_box", f"{here}: field 'bbox' is {bbox!r}; expected positive width and height")
    return (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
