"""COCO results (detections) as typed records: reading, validating, and writing them atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from masklab.atomic_files import atomic_write
from masklab.data.coco.gc_pause import gc_paused
from masklab.data.coco.load import read_json
from masklab.data.coco.records import CocoCategory, CocoFile, CocoImage
from masklab.data.coco.rle import Rle, encode_masks, rle_to_pycoco
from masklab.data.coco.rle_check import precheck_rle_counts
from masklab.data.meta import AttributeMeta
from masklab.errors import DataError
from masklab.structures.predictions import InstancePrediction

# Exact types, not isinstance: bool is an int subclass, and exact checks are cheap on big files.
_NUM = (int, float)


@dataclass(slots=True)
class CocoDetection:
    """One entry of a COCO results file (treat as read-only).

    Not frozen: a frozen dataclass costs ~5x more to build, and results files hold ~1e5 entries.

    Attributes:
        image_id: image the detection belongs to.
        category_id: source category id (not the contiguous label).
        score: ranking score.
        bbox: ``x, y, w, h`` box.
        area: the area COCO size buckets use for this detection. pycocotools' ``loadRes`` takes the
            box area ``w * h`` for every result when the first result carries a ``bbox`` and the mask
            area otherwise; we keep that rule so numbers stay identical.
        segmentation: compressed RLE with ``str`` counts, or None for box-only results.
        attributes: attribute name -> predicted value id (-1 = unknown).
        attribute_scores: attribute name -> probability of the predicted value.
    """

    image_id: int
    category_id: int
    score: float
    bbox: tuple[float, float, float, float]
    area: float
    segmentation: Rle | None = None
    attributes: dict[str, int] = field(default_factory=dict)
    attribute_scores: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to a results file."""
        out: dict[str, Any] = {
            "image_id": self.image_id,
            "category_id": self.category_id,
            "bbox": list(self.bbox),
            "score": self.score,
        }
        if self.segmentation is not None:
            out["segmentation"] = self.segmentation
        if self.attributes:
            out["attributes"] = dict(self.attributes)
            out["attribute_scores"] = dict(self.attribute_scores)
        return out


def load_coco_results(path: str | Path, gt: CocoFile) -> tuple[CocoDetection, ...]:
    """Read a results file (a JSON list) and validate it against the ground truth.

    Raises:
        DataError: naming the file, the result index and the field (unknown image or category,
            missing score, malformed RLE or box, attribute not in the metadata).
    """
    data = read_json(path)
    with gc_paused():
        return parse_coco_results(data, gt, str(path))


def parse_coco_results(data: Any, gt: CocoFile, where: str = "<memory>") -> tuple[CocoDetection, ...]:
    """Validate an already-parsed results list (see :func:`load_coco_results`)."""
    if not isinstance(data, list):
        raise DataError(f"{where}: top level is {type(data).__name__}; expected a list of detections")
    images = gt.image_by_id()
    cats = gt.category_by_id()
    attrs = {a.name: a for a in gt.attributes}
    # loadRes decides the area rule from the first result only (see CocoDetection.area).
    box_area = bool(data) and isinstance(data[0], dict) and bool(data[0].get("bbox"))
    # Every RLE string is checked, in one batch, before pycocotools reads any: it trusts them, and a
    # garbage one gives silently wrong areas and IoUs (or reads past the string).
    bad_rle = {i: p for i, (p, _) in precheck_rle_counts(data).items() if p is not None}
    dets: list[CocoDetection] = []
    for i, raw in enumerate(data):
        det = None if i in bad_rle else _parse_plain(raw, images, cats, box_area)
        dets.append(
            det
            if det is not None
            else _parse_checked(raw, images, cats, attrs, box_area, f"{where}: result [{i}]", bad_rle.get(i))
        )
    return tuple(dets)


def _parse_plain(
    raw: Any, images: dict[int, CocoImage], cats: dict[int, CocoCategory], box_area: bool
) -> CocoDetection | None:
    """The common, valid case without attributes, or None when :func:`_parse_checked` must look.

    Results files hold ~1e5 entries, so this path does the checks inline; anything unusual
    (missing box, attributes, a field that fails a check) goes to the slow path, which accepts or
    reports it exactly as before.
    """
    if type(raw) is not dict or "attributes" in raw or "attribute_scores" in raw:
        return None
    image = images.get(raw.get("image_id"))  # type: ignore[arg-type]
    score, bbox, segm = raw.get("score"), raw.get("bbox"), raw.get("segmentation")
    if image is None or raw.get("category_id") not in cats or type(score) not in _NUM:
        return None
    if not (math.isfinite(score) and type(bbox) is list and len(bbox) == 4):
        return None
    x, y, w, h = bbox
    if not (
        type(x) in _NUM and type(y) in _NUM and type(w) in _NUM and type(h) in _NUM and w >= 0 and h >= 0
    ):
        return None
    if segm is not None:
        if not box_area or type(segm) is not dict or type(segm.get("counts")) is not str:
            return None
        size = segm.get("size")
        if type(size) is not list or size != [image.height, image.width]:
            return None
    return CocoDetection(
        int(raw["image_id"]),
        int(raw["category_id"]),
        float(score),
        (float(x), float(y), float(w), float(h)),
        float(w * h),
        segm,
        {},
        {},
    )


def _parse_checked(
    raw: Any,
    images: dict[int, CocoImage],
    cats: dict[int, CocoCategory],
    attrs: dict[str, AttributeMeta],
    box_area: bool,
    here: str,
    rle_problem: str | None = None,
) -> CocoDetection:
    """Validate one result field by field; raises the one-line :class:`DataError` naming the field.

    ``rle_problem`` is what :func:`precheck_rle_counts` found wrong with the ``counts`` string.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{here} is {type(raw).__name__}; expected an object")
    image = images.get(raw.get("image_id"))  # type: ignore[arg-type]
    if image is None:
        raise DataError(
            f"{here}: field 'image_id' is {raw.get('image_id')!r}, which is not among the ground-truth images"
        )
    if raw.get("category_id") not in cats:
        raise DataError(
            f"{here}: field 'category_id' is {raw.get('category_id')!r}, which is not a ground-truth category"
        )
    score = raw.get("score")
    if type(score) not in _NUM or not math.isfinite(score):
        raise DataError(f"{here}: field 'score' is {score!r}; expected a finite number")
    segm = raw.get("segmentation")
    if segm is not None:
        ok = isinstance(segm, dict) and isinstance(segm.get("counts"), str)
        if not ok or list(segm.get("size") or []) != [image.height, image.width]:
            raise DataError(
                f"{here}: field 'segmentation' must be a compressed RLE with size [{image.height}, {image.width}]"
            )
        if rle_problem is not None:
            raise DataError(
                f"{here}: field 'segmentation.counts' is not a valid compressed RLE of size "
                f"[{image.height}, {image.width}]: {rle_problem}"
            )
    bbox = raw.get("bbox")
    if bbox is None:
        if segm is None:
            raise DataError(f"{here}: fields 'bbox' and 'segmentation' are both missing")
        bbox = mask_utils.toBbox(rle_to_pycoco(segm)).tolist()
    elif not (type(bbox) is list and len(bbox) == 4 and all(type(v) in _NUM for v in bbox)):
        raise DataError(f"{here}: field 'bbox' is {bbox!r}; expected [x, y, w, h]")
    elif bbox[2] < 0 or bbox[3] < 0:
        raise DataError(f"{here}: field 'bbox' is {bbox!r}; expected non-negative width and height")
    if box_area or segm is None:
        area = float(bbox[2] * bbox[3])
    else:
        area = float(mask_utils.area(rle_to_pycoco(segm)))
    values, probs = _attributes(raw, attrs, here)
    return CocoDetection(
        int(raw["image_id"]),
        int(raw["category_id"]),
        float(score),
        tuple(float(v) for v in bbox),  # type: ignore[arg-type]
        area,
        segm,
        values,
        probs,
    )


def _attributes(
    raw: dict[str, Any], attrs: dict[str, AttributeMeta], here: str
) -> tuple[dict[str, int], dict[str, float]]:
    if ("attributes" not in raw and "attribute_scores" not in raw) or not attrs:
        # A ground truth without attributes scores AP only (as the evaluator does for such a dataset).
        return {}, {}
    values = raw.get("attributes") or {}
    probs = raw.get("attribute_scores") or {}
    if not isinstance(values, dict) or not isinstance(probs, dict):
        raise DataError(f"{here}: fields 'attributes'/'attribute_scores' must be objects {{name: value}}")
    for name, value in values.items():
        meta = attrs.get(name)
        if meta is None:
            raise DataError(
                f"{here}: field 'attributes.{name}' is not an attribute of the ground truth (known: {', '.join(attrs) or 'none'})"
            )
        if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value < len(meta.values):
            raise DataError(
                f"{here}: field 'attributes.{name}' is {value!r}; expected -1 or a value id in [0, {len(meta.values)})"
            )
    for name, prob in probs.items():
        if name not in attrs:
            raise DataError(
                f"{here}: field 'attribute_scores.{name}' is not an attribute of the ground truth (known: {', '.join(attrs) or 'none'})"
            )
        if type(prob) not in _NUM or not 0.0 <= prob <= 1.0:
            raise DataError(
                f"{here}: field 'attribute_scores.{name}' is {prob!r}; expected a probability in [0, 1]"
            )
    return {k: int(v) for k, v in values.items()}, {k: float(v) for k, v in probs.items()}


def write_coco_results(path: str | Path, detections: Sequence[CocoDetection]) -> None:
    """Write detections as a COCO results JSON list, atomically (temporary file + rename).

    Each entry carries ``image_id``, ``category_id``, ``bbox`` (xywh), ``score``, the RLE
    ``segmentation`` and, when present, ``attributes`` ``{name: value_id}`` and
    ``attribute_scores`` ``{name: prob}``.
    """
    text = json.dumps([d.to_json() for d in detections])
    atomic_write(path, lambda f: f.write(text.encode()))


def detections_from_prediction(
    pred: InstancePrediction, category_ids: Sequence[int], attribute_names: Sequence[str] = ()
) -> list[CocoDetection]:
    """One image's predictions as COCO detections: masks RLE-encoded, boxes derived from the masks.

    Contiguous labels map back to source ids through ``category_ids`` (``DatasetMeta.category_ids``);
    the image id comes from ``pred.meta.image_id``. The area is the box area, as pycocotools'
    ``loadRes`` sets it for results that carry boxes (so a written file evaluates the same).
    """
    if len(pred) == 0:
        return []
    labels = pred.labels.tolist()
    if min(labels) < 0 or max(labels) >= len(category_ids):
        raise DataError(
            f"prediction for image id={pred.meta.image_id}: labels {min(labels)}..{max(labels)} outside [0, {len(category_ids)}) classes"
        )
    rles = encode_masks(pred.masks)
    boxes = mask_utils.toBbox([rle_to_pycoco(r) for r in rles]).tolist()
    scores = pred.scores.tolist()
    attrs = {
        n: (pred.attributes[n].labels.tolist(), pred.attributes[n].scores.tolist())
        for n in attribute_names
        if n in pred.attributes
    }
    out = []
    for k, rle in enumerate(rles):
        x, y, w, h = (float(v) for v in boxes[k])
        out.append(
            CocoDetection(
                image_id=int(pred.meta.image_id),
                category_id=int(category_ids[labels[k]]),
                score=float(scores[k]),
                bbox=(x, y, w, h),
                area=w * h,
                segmentation=rle,
                attributes={n: int(v[0][k]) for n, v in attrs.items()},
                attribute_scores={n: float(v[1][k]) for n, v in attrs.items()},
            )
        )
    return out


def write_prediction_results(
    path: str | Path,
    predictions: Sequence[InstancePrediction],
    category_ids: Sequence[int],
    attributes: Sequence[AttributeMeta] = (),
) -> None:
    """Write model predictions as a COCO results file (see :func:`write_coco_results`)."""
    names = [a.name for a in attributes]
    dets = [d for pred in predictions for d in detections_from_prediction(pred, category_ids, names)]
    write_coco_results(path, dets)
