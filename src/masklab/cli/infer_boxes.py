"""``masklab infer CFG CKPT --boxes BOXES.json --images DIR --out LABELS.json [--vis]``: MAL labeling.

The input COCO file is re-emitted with every annotation kept (same order, every input field kept,
``score`` included) plus an RLE ``segmentation`` and ``area`` = the mask's pixel count. Masks are
pasted back at the crop's offset, clipped at the image borders, thresholded per size bucket
(``train.mask_thres``). Bad input is a one-line error before any output is written: a zero-size
box, a box entirely outside its image, a category or image id missing from the file, a missing
image file. ``--vis`` writes overlays to ``<out stem>_vis/<image file name>.png`` (subfolders of
``file_name`` mirrored). Both output paths are checked before labeling starts, and the labels file
and its overlays are written all or nothing (a full disk while writing them leaves neither).

As ``tao model mal inference`` reads its spec, ``masklab infer MAL_SPEC CKPT`` with no flags takes
the boxes, the image folder and the output file from the spec's ``inference.ann_path``,
``inference.img_dir`` and ``inference.label_dump_path``; ``--boxes`` / ``--images`` / ``--out``
override them. A checkpoint whose stored config is of another task than the given config is a
one-line error naming both tasks (either way round: :func:`is_labeling_call` catches a MAL
checkpoint given with a semantic or instance config before that path starts).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masklab.engine.checkpoint import check_checkpoint_task, stored_task
from masklab.errors import ConfigError, DataError

# (flag, placeholder, key of the spec's inference section) of what labeling needs.
_PATHS = (
    ("--boxes", "BOXES.json", "ann_path"),
    ("--images", "DIR", "img_dir"),
    ("--out", "LABELS.json", "label_dump_path"),
)


def label_boxes(
    rc: Any, checkpoint: str | Path, boxes: str | Path, images: str | Path, *, device: str | None = None
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Label every box of ``boxes``: the output COCO dict and annotation id -> (H, W) bool mask.

    Crops of whole images are batched ``inference.batch_size`` at a time (see
    :func:`masklab.models.mal.labeling.label_dataset`).
    """
    from masklab.config.assemble import resolve_device
    from masklab.data.coco.load import read_json
    from masklab.data.coco.rle import encode_masks
    from masklab.engine.checkpoint import load_model_weights
    from masklab.models.mal.build import build_mal_model, mal_train_section, open_box_dataset
    from masklab.models.mal.config import mal_dataset_config
    from masklab.models.mal.labeling import label_dataset

    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: checkpoint file not found")
    if not Path(images).is_dir():
        raise DataError(f"{images}: image folder not found")
    raw = read_json(boxes)
    t = mal_train_section(rc)
    dataset = open_box_dataset(
        boxes,
        images,
        training=False,
        crop_size=mal_dataset_config(rc).crop_size,
        test_margin_rate=(t.test_margin_rate[0], t.test_margin_rate[1]),
        image_cache_size=0,  # labeling decodes each image once
    )
    model = build_mal_model(rc)
    load_model_weights(model, ckpt, strict=True)
    dev = resolve_device(device or rc.runtime.device)
    masks = label_dataset(model.to(dev), dataset, batch_size=rc.inference.batch_size)
    out_anns = []
    for ann in raw["annotations"]:
        mask = masks.get(int(ann["id"]))
        if mask is None:  # cannot happen: labeling keeps every box or raises
            raise DataError(f"{boxes}: annotation id {ann['id']} was not labeled")
        rle = encode_masks(mask[None])[0]
        out_anns.append({**ann, "segmentation": rle, "area": float(mask.sum())})
    return {**raw, "annotations": out_anns}, masks


def overlay_name(file_name: str) -> Path:
    """Where an image's overlay goes under the ``_vis`` folder: its ``file_name`` with ``.png``
    (subfolders mirrored, so ``a/x.png`` and ``b/x.png`` do not overwrite each other); a name that
    would leave the folder (absolute, ``..``) keeps only its last part."""
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(rel.name)
    return rel.with_suffix(".png")


def write_overlays(coco: dict[str, Any], masks: dict[int, np.ndarray], images: Path, out_dir: Path) -> int:
    """One PNG per image: the pseudo-masks blended over it (random colour per box), box outlines."""
    from masklab.data.io import read_image, write_png_atomic

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
        # read_image: the pixels labeling saw (16-bit PNGs scaled, not saturated to white).
        canvas = read_image(images / img["file_name"]).permute(1, 2, 0).numpy().astype(np.float32)
        for ann in anns:
            colour = rng.uniform(40, 255, size=3)
            m = masks[int(ann["id"])]
            canvas[m] = 0.5 * canvas[m] + 0.5 * colour
            x, y, w, h = (int(round(v)) for v in ann["bbox"])
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + w, canvas.shape[1]) - 1, min(y + h, canvas.shape[0]) - 1
            canvas[y0 : y1 + 1, [x0, x1]] = colour
            canvas[[y0, y1], x0 : x1 + 1] = colour
        target = out_dir / overlay_name(img["file_name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        write_png_atomic(target, canvas.clip(0, 255).astype(np.uint8))
        written += 1
    return written


def config_task(config: str, overrides: Sequence[str]) -> str | None:
    """The ``task`` of a config file (bases and overrides applied, sections not validated), or
    None when the file is missing (the command's own resolve reports that)."""
    from masklab.config.load import load_config

    if not Path(config).is_file():
        return None
    return str(load_config(config, list(overrides)).get("task", "semantic"))


def is_labeling_call(args: argparse.Namespace) -> bool:
    """Whether ``masklab infer`` is MAL labeling: ``--boxes`` given, or a ``task: mal`` config.

    For any other config, a MAL checkpoint is refused here in one line (the semantic / instance
    path would fail on the dataset metadata without naming the checkpoint).
    """
    if args.boxes is not None:
        return True
    task = config_task(args.config, args.overrides)
    if task is None:
        return False
    if task == "mal":
        return True
    if stored_task(args.checkpoint) == "mal":  # other mismatches are the semantic/instance path's
        check_checkpoint_task(args.checkpoint, task, args.config)
    return False


def labeling_paths(args: argparse.Namespace, rc: Any) -> tuple[Path, Path, Path]:
    """``(boxes, images, out)``: each flag, else the spec's ``inference`` key (TAO's inference spec)."""
    if args.input is not None:
        raise ConfigError(
            f"{args.config}: --input {args.input}: a MAL config labels boxes: use --boxes BOXES.json "
            "--images DIR (or the spec's inference.ann_path / img_dir), not --input"
        )
    found: list[Path] = []
    missing: list[tuple[str, str, str]] = []
    for (flag, meta, key), given in zip(_PATHS, (args.boxes, args.images, args.out), strict=True):
        value = given if given is not None else getattr(rc.inference, key, None)
        if value is None or str(value) == "":
            missing.append((flag, meta, key))
        else:
            found.append(Path(value))
    if missing:
        flags = " ".join(f"{flag} {meta}" for flag, meta, _ in missing)
        keys = " / ".join(key for _, _, key in missing)
        raise ConfigError(
            f"{args.config}: a MAL config labels boxes: use {flags} (or the spec's inference.{keys})"
        )
    return found[0], found[1], found[2]


def _origin(args: argparse.Namespace, flag: str, key: str) -> str:
    return flag if getattr(args, flag[2:]) is not None else f"inference.{key} of {args.config}"


def run(args: argparse.Namespace) -> int:
    """The labeling command: ``infer --boxes``, or a MAL spec's ``inference`` section."""
    from masklab.atomic_files import atomic_write
    from masklab.cli.common import resolve_for_cli
    from masklab.cli.output import check_output_dir, check_output_file
    from masklab.inference.staging import staged_outputs

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would label every box and write the file
        raise ConfigError(
            "infer --boxes: MAL labeling runs in one process; start it without torchrun "
            f"(WORLD_SIZE is {os.environ['WORLD_SIZE']})"
        )
    rc = resolve_for_cli(args.config, args.overrides)
    if rc.task != "mal":
        raise ConfigError(f"{args.config}: infer --boxes needs a 'task: mal' config, got task {rc.task!r}")
    check_checkpoint_task(args.checkpoint, rc.task, args.config)
    boxes, images, out = labeling_paths(args, rc)
    if not boxes.is_file():
        raise DataError(f"{boxes}: boxes file not found ({_origin(args, '--boxes', 'ann_path')})")
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found ({_origin(args, '--images', 'img_dir')})")
    # Both outputs are checked before labeling: a path error must not come after the labels (or
    # after a labels file written while its overlays cannot be).
    out_flag = "--out" if args.out is not None else f"{args.config}: inference.label_dump_path"
    check_output_file(out, out_flag, "labels.json")
    vis_dir = out.with_name(f"{out.stem}_vis")
    if args.vis:
        check_output_dir(vis_dir, "--vis")
    coco, masks = label_boxes(rc, args.checkpoint, boxes, images, device=args.device)
    text = json.dumps(coco)
    # The labels and their overlays land together or not at all (a full disk, an unreadable image).
    with staged_outputs(out.parent, "labels") as stage:
        atomic_write(stage / out.name, lambda f: f.write(text.encode()))
        n = write_overlays(coco, masks, images, stage / vis_dir.name) if args.vis else 0
    print(f"{len(coco['annotations'])} boxes labeled -> {out}")
    if args.vis:
        print(f"{n} overlays -> {vis_dir}")
    return 0
