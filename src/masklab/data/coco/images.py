"""Reading the image a COCO ``images`` entry names, checked against the size the file states.

A missing image is reported by the entry that names it (``FILE: images[id=7].file_name 'x.png': no
such file under IMG_DIR``), so the user knows which JSON entry to fix, not only which path failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from masklab.data.coco.records import CocoImage
from masklab.data.io import read_image
from masklab.errors import DataError


def check_image_files(img_dir: Path, images: Iterable[CocoImage], ann_path: Path | str) -> None:
    """Refuse, before any training step, entries without ``file_name`` or whose file is missing.

    Raises:
        DataError: naming the annotation file, the first bad image entry and ``img_dir``, with how
            many entries are affected.
    """
    images = list(images)
    unnamed = [im for im in images if not im.file_name]
    if unnamed:
        raise DataError(
            f"{ann_path}: images[id={unnamed[0].id}]: missing 'file_name' (the image path relative to "
            f"{img_dir}); {len(unnamed)} of {len(images)} image entries lack it"
        )
    missing = [im for im in images if not (img_dir / im.file_name).is_file()]
    if missing:
        raise DataError(
            f"{_missing_message(img_dir, missing[0], ann_path)} ({len(missing)} of {len(images)} images missing)"
        )


def _missing_message(img_dir: Path, image: CocoImage, ann_path: Path | str) -> str:
    return f"{ann_path}: images[id={image.id}].file_name {image.file_name!r}: no such file under {img_dir}"


def read_coco_image(img_dir: Path, image: CocoImage, ann_path: Path | str) -> torch.Tensor:
    """(3, H, W) uint8 pixels of ``img_dir / image.file_name``.

    Raises:
        DataError: the entry has no ``file_name`` or its file is missing (naming the entry), the file
            is unreadable, or its size differs from the entry's ``height``/``width`` (annotations
            drawn for another size would be silently misplaced).
    """
    if not image.file_name:
        raise DataError(f"{ann_path}: images[id={image.id}]: missing 'file_name'")
    path = img_dir / image.file_name
    if not path.is_file():
        raise DataError(_missing_message(img_dir, image, ann_path))
    pixels = read_image(path)
    if tuple(pixels.shape[-2:]) != (image.height, image.width):
        raise DataError(
            f"{path}: image is {pixels.shape[-2]}x{pixels.shape[-1]} (HxW) but {ann_path} says "
            f"image id={image.id} is {image.height}x{image.width}"
        )
    return pixels
