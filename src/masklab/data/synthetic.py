"""``masklab data synth``: a deterministic synthetic segmentation dataset (DESIGN §7).

Layout written under ``DIR``::

    images/{train,val}/NNNNNN.png     RGB images
    labels/{train,val}/NNNNNN.png     semantic class ids (0 = background, 1.. = shapes)
    annotations/{train,val}.json      COCO instances with RLE masks and per-object attributes
    meta.json                         semantic classes (incl. background), palette, attributes
    synth.json                        the generation parameters; written last = "complete"

Each image is drawn from its own seed (``seed``, split, index), so files are byte-identical
across runs and machines with the same libraries. Each split is written into a temporary folder
and renamed into place, so an interrupted run never leaves a half-written split behind.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from masklab.data.io import write_png_atomic
from masklab.data.meta import AttributeMeta, DatasetMeta
from masklab.data.synthetic_render import COLORS, PATTERNS, SHAPES, ShapeSpec, background, fill, shape_mask
from masklab.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_SALT = {"train": 0, "val": 1}
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthParams:
    """The parameters that define a synthetic dataset (stored in ``synth.json``)."""

    num_train: int
    num_val: int
    size: int
    seed: int
    min_objects: int
    max_objects: int
    min_visible: int
    version: int = _FORMAT_VERSION


@dataclass
class SynthReport:
    """What :func:`synthesize` did.

    Attributes:
        out_dir: dataset root.
        skipped: True when a complete dataset with the same parameters already existed.
        num_images: images per split.
        num_instances: instances per split.
        seconds: wall time spent.
    """

    out_dir: Path
    skipped: bool
    num_images: dict[str, int] = field(default_factory=dict)
    num_instances: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.out_dir}: complete dataset with these parameters already present; nothing written"
        parts = ", ".join(
            f"{s}: {self.num_images.get(s, 0)} images / {self.num_instances.get(s, 0)} instances"
            for s in SPLITS
        )
        return f"{self.out_dir}: wrote {parts} in {self.seconds:.1f}s"


def synth_meta() -> DatasetMeta:
    """Semantic metadata of the synthetic set: background + one class per shape, colour and pattern attributes."""
    return DatasetMeta(
        classes=("background", *SHAPES),
        attributes=(AttributeMeta("color", tuple(COLORS)), AttributeMeta("pattern", PATTERNS)),
    )


@dataclass
class _Object:
    spec: ShapeSpec
    mask: np.ndarray  # visible part, updated as later objects occlude it


def _draw_image(params: SynthParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray, list[_Object]]:
    """One image, its semantic label map and its visible objects (in drawing order)."""
    rng = np.random.default_rng([params.seed, _SPLIT_SALT[split], index])
    size = params.size
    canvas = background(rng, size)
    objects: list[_Object] = []
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    for k in range(n):
        # The first object cycles through classes/colours/patterns so that every value occurs in
        # any split of a dozen images or more; the rest are random.
        if k == 0:
            shape, color, pattern = index % len(SHAPES), index % len(COLORS), (index // 2) % len(PATTERNS)
        else:
            shape = int(rng.integers(len(SHAPES)))
            color = int(rng.integers(len(COLORS)))
            pattern = int(rng.integers(len(PATTERNS)))
        for _attempt in range(10):
            radius = float(rng.uniform(0.09, 0.22) * size)
            spec = ShapeSpec(
                shape=shape,
                color=color,
                pattern=pattern,
                cx=float(rng.uniform(0.3 * radius, size - 0.3 * radius)),
                cy=float(rng.uniform(0.3 * radius, size - 0.3 * radius)),
                radius=radius,
                angle=float(rng.uniform(0, 2 * np.pi)),
            )
            mask = shape_mask(spec, size)
            if mask.sum() < params.min_visible:
                continue
            # Occlusion may hide part of earlier objects, but never most of one: a tiny visible
            # remnant would be an unlearnable instance (and dropping it would leave its pixels
            # in the semantic map without an instance).
            if all((o.mask & ~mask).sum() >= max(params.min_visible, 0.4 * o.mask.sum()) for o in objects):
                break
        else:
            continue
        for o in objects:
            o.mask &= ~mask
        canvas = np.where(mask[..., None], fill(rng, spec, size), canvas)
        objects.append(_Object(spec, mask))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    label = np.zeros((size, size), dtype=np.uint8)
    for o in objects:
        label[o.mask] = o.spec.shape + 1
    return image, label, objects


def _coco_annotation(obj: _Object, ann_id: int, image_id: int) -> dict[str, object]:
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    ys, xs = np.nonzero(obj.mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.spec.shape + 1,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(obj.mask.sum()),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": 0,
        "attributes": {"color": obj.spec.color, "pattern": obj.spec.pattern},
    }


def _write_image(params: SynthParams, split: str, tmp: Path, i: int) -> list[dict[str, object]]:
    """Draw and write image ``i`` of ``split``; return its annotations (ids filled in later)."""
    image, label, objects = _draw_image(params, split, i)
    name = f"{i:06d}.png"
    write_png_atomic(tmp / "images" / name, image)
    write_png_atomic(tmp / "labels" / name, label)
    return [_coco_annotation(obj, 0, i + 1) for obj in objects]


def _write_split(params: SynthParams, split: str, count: int, tmp: Path, workers: int) -> int:
    """Write one split into ``tmp`` (images/, labels/, annotations.json); return the instance count.

    Every image comes from its own seed, so ``workers`` processes write the same bytes as one."""
    for sub in ("images", "labels"):  # present even for an empty split (count 0)
        (tmp / sub).mkdir()
    draw = functools.partial(_write_image, params, split, tmp)
    if workers > 1 and count > 1 and not mp.current_process().daemon:  # a daemon may not fork
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        with context.Pool(workers) as pool:
            per_image = pool.map(draw, range(count), chunksize=max(1, count // (4 * workers)))
    else:
        per_image = [draw(i) for i in range(count)]
    images = [
        {"id": i + 1, "width": params.size, "height": params.size, "file_name": f"{i:06d}.png"}
        for i in range(count)
    ]
    annotations = [ann for anns in per_image for ann in anns]
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    coco = {
        "info": {"description": f"masklab synthetic shapes ({split})", "version": str(_FORMAT_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPES)
        ],
        "attributes": [
            {"name": "color", "values": list(COLORS)},
            {"name": "pattern", "values": list(PATTERNS)},
        ],
    }
    (tmp / "annotations.json").write_text(json.dumps(coco))
    return len(annotations)


def _is_complete(out: Path, params: SynthParams) -> bool:
    marker = out / "synth.json"
    if not marker.is_file():
        return False
    try:
        stored = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if stored != asdict(params):
        return False
    counts = {"train": params.num_train, "val": params.num_val}
    return (out / "meta.json").is_file() and all(
        (out / "annotations" / f"{s}.json").is_file()
        and len(list((out / "images" / s).glob("*.png"))) == counts[s]
        for s in SPLITS
    )


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, removing an older ``dst`` (only paths this generator owns)."""
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def synthesize(
    out_dir: str | Path,
    num_train: int = 200,
    num_val: int = 40,
    size: int = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 5,
    min_visible: int = 30,
    workers: int | None = None,
) -> SynthReport:
    """Write the synthetic dataset under ``out_dir`` (see the module docstring for the layout).

    Args:
        out_dir: dataset root; created if missing.
        num_train: training images.
        num_val: validation images.
        size: image side in pixels (square images).
        seed: master seed; the same seed gives byte-identical files.
        min_objects: fewest objects attempted per image.
        max_objects: most objects attempted per image.
        min_visible: smallest visible area (pixels) an instance may have.
        workers: processes drawing images (default: the CPUs available, at most 8); the files
            are the same for any number.

    Returns:
        A :class:`SynthReport`; ``skipped`` is True when an identical complete dataset was found.

    Raises:
        DataError: a parameter is out of range.
    """
    start = time.perf_counter()
    if num_train < 0 or num_val < 0:
        raise DataError(f"synth: num_train={num_train}, num_val={num_val}; expected counts >= 0")
    if size < 32:
        raise DataError(f"synth: size={size}; expected at least 32 pixels")
    if not 1 <= min_objects <= max_objects:
        raise DataError(
            f"synth: min_objects={min_objects}, max_objects={max_objects}; expected 1 <= min <= max"
        )
    params = SynthParams(num_train, num_val, size, seed, min_objects, max_objects, min_visible)
    out = Path(out_dir)
    counts = {"train": num_train, "val": num_val}
    if _is_complete(out, params):
        return SynthReport(out, True, counts, seconds=time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".synth-tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    # The marker goes first so that a dataset half-replaced by this run is never taken as complete.
    (out / "synth.json").unlink(missing_ok=True)
    report = SynthReport(out, False, counts)
    n_workers = workers if workers is not None else min(8, len(os.sched_getaffinity(0)))
    for split in SPLITS:
        tmp = Path(tempfile.mkdtemp(prefix=f".synth-tmp-{split}-", dir=out))
        try:
            report.num_instances[split] = _write_split(params, split, counts[split], tmp, n_workers)
            _replace(tmp / "images", out / "images" / split)
            _replace(tmp / "labels", out / "labels" / split)
            _replace(tmp / "annotations.json", out / "annotations" / f"{split}.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    (out / "meta.json").write_text(json.dumps(synth_meta().to_json(), indent=1))
    (out / "synth.json").write_text(json.dumps(asdict(params), indent=1))
    report.seconds = time.perf_counter() - start
    return report
