"""Reading the image a COCO ``images`` entry names, checked against the size the file states."""

from __future__ import annotations

from pathlib import Path

import torch

from masklab.data.coco.records import CocoImage
from masklab.data.io import read_image
from masklab.errors import DataError


def read_coco_image(img_dir: Path, image: CocoImage, ann_path: Path | str) -> torch.Tensor:
    """(3, H, W) uint8 pixels of ``img_dir / image.file_name``.

    Raises:
        DataError: the file is unreadable, or its size differs from the entry's ``height``/``width``
            (annotations drawn for another size would be silently misplaced).
    """
    path = img_dir / image.file_name
    pixels = read_image(path)
    if tuple(pixels.shape[-2:]) != (image.height, image.width):
        raise DataError(
            f"{path}: image is {pixels.shape[-2]}x{pixels.shape[-1]} (HxW) but {ann_path} says "
            f"image id={image.id} is {image.height}x{image.width}"
        )
    return pixels
