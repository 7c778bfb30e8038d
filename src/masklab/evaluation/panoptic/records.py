"""COCO-panoptic files as typed records: the JSON (``annotations`` with ``segments_info``,
``categories`` with ``isthing``) and the PNG id maps (id = R + 256 G + 256^2 B)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from masklab.data.coco.load import read_json
from masklab.errors import DataError

VOID = 0  # PNG id of unlabeled pixels


@dataclass(frozen=True)
class PanopticCategory:
    """One ``categories`` entry.

    Attributes:
        id: category id.
        name: category name.
        isthing: countable object (True) or amorphous stuff (False).
    """

    id: int
    name: str
    isthing: bool


@dataclass(frozen=True)
class PanopticSegment:
    """One ``segments_info`` entry.

    Attributes:
        id: the segment's id in the PNG (R + 256 G + 256^2 B).
        category_id: id of a ``categories`` entry.
        iscrowd: crowd region (never matched; excuses overlapping predictions of its category).
        area: pixel count as written in the JSON (None when absent: taken from the PNG).
    """

    id: int
    category_id: int
    iscrowd: bool = False
    area: int | None = None


@dataclass(frozen=True)
class PanopticImage:
    """One ``annotations`` entry: the PNG of an image and its segments.

    Attributes:
        image_id: image id.
        file_name: PNG name relative to the segmentation folder.
        segments: the segments in file order.
    """

    image_id: int
    file_name: str
    segments: tuple[PanopticSegment, ...]


@dataclass(frozen=True)
class PanopticFile:
    """A validated COCO-panoptic JSON.

    Attributes:
        path: where it was read from (for messages).
        annotations: one entry per image, in file order.
        categories: category records (may be empty in a predictions file).
    """

    path: str
    annotations: tuple[PanopticImage, ...]
    categories: tuple[PanopticCategory, ...]

    def by_image(self) -> dict[int, PanopticImage]:
        """Image id -> annotation."""
        return {a.image_id: a for a in self.annotations}


def load_panoptic_json(path: str | Path) -> PanopticFile:
    """Read and validate a COCO-panoptic JSON (one-line :class:`DataError` naming file, entry, field)."""
    return parse_panoptic(read_json(path), str(path))


def parse_panoptic(data: Any, where: str = "<memory>") -> PanopticFile:
    """Validate already-parsed panoptic JSON (see :func:`load_panoptic_json`)."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{where}: expected an object with an 'annotations' list")
    cats = tuple(
        _category(c, f"{where}: categories[{i}]") for i, c in enumerate(data.get("categories") or [])
    )
    anns = tuple(_image(a, f"{where}: annotations[{i}]") for i, a in enumerate(data["annotations"]))
    seen: set[int] = set()
    for ann in anns:
        if ann.image_id in seen:
            raise DataError(f"{where}: image_id {ann.image_id} has two annotations")
        seen.add(ann.image_id)
    return PanopticFile(where, anns, cats)


def _int(raw: dict[str, Any], key: str, here: str) -> int:
    value = raw.get(key)
    if type(value) is not int:
        raise DataError(f"{here}: field {key!r} is {value!r}; expected an integer")
    return value


def _category(raw: Any, here: str) -> PanopticCategory:
    if not isinstance(raw, dict):
        raise DataError(f"{here} is {type(raw).__name__}; expected an object")
    isthing = raw.get("isthing")
    if isthing not in (0, 1, True, False):
        raise DataError(f"{here}: field 'isthing' is {isthing!r}; expected 0 or 1")
    return PanopticCategory(_int(raw, "id", here), str(raw.get("name", "")), bool(isthing))


def _image(raw: Any, here: str) -> PanopticImage:
    if not isinstance(raw, dict):
        raise DataError(f"{here} is {type(raw).__name__}; expected an object")
    image_id = _int(raw, "image_id", here)
    name = raw.get("file_name")
    if not isinstance(name, str) or not name:
        raise DataError(f"{here} (image_id {image_id}): field 'file_name' is {name!r}; expected a PNG name")
    infos = raw.get("segments_info")
    if not isinstance(infos, list):
        raise DataError(f"{here} (image_id {image_id}): field 'segments_info' must be a list")
    segments = []
    ids: set[int] = set()
    for j, info in enumerate(infos):
        at = f"{here} (image_id {image_id}): segments_info[{j}]"
        if not isinstance(info, dict):
            raise DataError(f"{at} is {type(info).__name__}; expected an object")
        seg_id = _int(info, "id", at)
        if seg_id == VOID or seg_id in ids:
            raise DataError(f"{at}: field 'id' is {seg_id}; expected a unique non-zero segment id")
        ids.add(seg_id)
        area = info.get("area")
        if area is not None and (type(area) is not int or area < 0):
            raise DataError(f"{at}: field 'area' is {area!r}; expected a non-negative integer")
        crowd = info.get("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            raise DataError(f"{at}: field 'iscrowd' is {crowd!r}; expected 0 or 1")
        segments.append(PanopticSegment(seg_id, _int(info, "category_id", at), bool(crowd), area))
    return PanopticImage(image_id, name, tuple(segments))


def read_id_map(path: str | Path) -> np.ndarray:
    """A panoptic PNG as an (H, W) int64 segment-id map (R + 256 G + 256^2 B)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: panoptic PNG not found")
    try:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    except OSError as exc:
        raise DataError(f"{p}: not a readable image ({exc})") from None
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_map_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 colours, the inverse of :func:`read_id_map`."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)
