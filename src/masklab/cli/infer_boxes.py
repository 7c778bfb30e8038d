"""``masklab infer CFG CKPT --boxes BOXES.json --images DIR --out LABELS.json [--vis]``: MAL labeling.

The input COCO file is re-emitted with every annotation kept (same order, every input field kept,
``score`` included) plus an RLE ``segmentation`` and ``area`` = the mask's pixel count. Masks are
pasted back at the crop's offset, clipped at the image borders, thresholded per size bucket
(``train.mask_thres``). Bad input is a one-line error before any output is written: a zero-size
box, a box entirely outside its image, a category or image id missing from the file, a missing
image file. The output is written atomically (a crash leaves no partial file). ``--vis`` writes
overlays to ``<out stem>_vis/<image file name>.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import ConfigError, DataError


def label_boxes(
    rc: Any, checkpoint: str | Path, boxes: str | Path, images: str | Path, *, device: str = "auto"
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Label every box of ``boxes``: the output COCO dict and annotation id -> (H, W) bool mask.

    Crops of whole images are batched ``inference.batch_size`` at a time (see
    :func:`masklab.models.mal.labeling.label_dataset`).
    """
    from masklab.config.assemble import resolve_device
    from masklab.data.coco.load import read_json
    from masklab.data.coco.rle import encode_masks
    from masklab.data.datasets.box_crops import BoxCropDataset
    from masklab.engine.checkpoint import load_model_weights
    from masklab.models.mal.build import build_mal_model, mal_train_section
    from masklab.models.mal.config import mal_dataset_config
    from masklab.models.mal.labeling import label_dataset

    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: checkpoint file not found")
    if not Path(images).is_dir():
        raise DataError(f"{images}: image folder not found")
    raw = read_json(boxes)
    t = mal_train_section(rc)
    dataset = BoxCropDataset(
        str(boxes),
        str(images),
        training=False,
        crop_size=mal_dataset_config(rc).crop_size,
        test_margin_rate=(t.test_margin_rate[0], t.test_margin_rate[1]),
        image_cache_size=0,  # labeling decodes each image once
    )
    model = build_mal_model(rc)
    load_model_weights(model, ckpt, strict=True)
    dev = resolve_device(device if device != "auto" else rc.runtime.device)
    masks = label_dataset(model.to(dev), dataset, batch_size=rc.inference.batch_size)
    out_anns = []
    for ann in raw["annotations"]:
        mask = masks.get(int(ann["id"]))
        if mask is None:  # cannot happen: labeling keeps every box or raises
            raise DataError(f"{boxes}: annotation id {ann['id']} was not labeled")
        rle = encode_masks(mask[None])[0]
        out_anns.append({**ann, "segmentation": rle, "area": float(mask.sum())})
    return {**raw, "annotations": out_anns}, masks


def write_overlays(coco: dict[str, Any], masks: dict[int, np.ndarray], images: Path, out_dir: Path) -> int:
    """One PNG per image: the pseudo-masks blended over it (random colour per box), box outlines."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    written = 0
    for img in coco["images"]:
        anns = by_image.get(int(img["id"]))
        if not anns:
            continue
        canvas = np.asarray(Image.open(images / img["file_name"]).convert("RGB")).astype(np.float32)
        for ann in anns:
            colour = rng.uniform(40, 255, size=3)
            m = masks[int(ann["id"])]
            canvas[m] = 0.5 * canvas[m] + 0.5 * colour
            x, y, w, h = (int(round(v)) for v in ann["bbox"])
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + w, canvas.shape[1]) - 1, min(y + h, canvas.shape[0]) - 1
            canvas[y0 : y1 + 1, [x0, x1]] = colour
            canvas[[y0, y1], x0 : x1 + 1] = colour
        name = Path(img["file_name"]).with_suffix(".png").name
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(out_dir / name)
        written += 1
    return written


def run(args: argparse.Namespace) -> int:
    """The ``infer --boxes`` command."""
    from masklab.cli.common import resolve_for_cli
    from masklab.engine.checkpoint import atomic_write

    if args.images is None:
        raise ConfigError(
            "infer --boxes: --images DIR (the folder the boxes' file_name refer to) is required"
        )
    rc = resolve_for_cli(args.config, args.overrides)
    if rc.task != "mal":
        raise ConfigError(f"{args.config}: infer --boxes needs a 'task: mal' config, got task {rc.task!r}")
    boxes = Path(args.boxes)
    if not boxes.is_file():
        raise DataError(f"{boxes}: boxes file not found")
    coco, masks = label_boxes(rc, args.checkpoint, boxes, Path(args.images), device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(coco)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"{len(coco['annotations'])} boxes labeled -> {out}")
    if args.vis:
        vis_dir = out.with_name(f"{out.stem}_vis")
        n = write_overlays(coco, masks, Path(args.images), vis_dir)
        print(f"{n} overlays -> {vis_dir}")
    return 0
