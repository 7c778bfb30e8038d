"""What the Inferencer runs on: paths, folders and arrays expanded into images with output names.

* A folder is searched recursively for image files (sorted), skipping hidden files and folders
  (names starting with ``.``, e.g. ``.ipynb_checkpoints``). Each image's output name is its path
  relative to the folder without the extension, so ``dir/a/x.png`` is written as ``pred/a/x.png``
  and ``vis/a/x.png``: subfolders are mirrored and files of the same name in different subfolders
  do not overwrite each other.
* When two inputs differ only by extension (``a/x.png`` and ``a/x.jpg``), both keep it:
  ``pred/a/x.png.png`` and ``pred/a/x.jpg.png``. Two inputs that still share an output name (the same
  file twice, or two input folders holding the same relative path) are refused before anything
  runs, by :func:`check_unique_names`, when predictions are written.
* A file given directly is named by its file name; an array by its index (``array_0003``).
* Files are read upright: a JPEG's EXIF ``Orientation`` is applied, as ``cv2.imread`` (MMSeg) and
  detectron2's ``read_image`` do, so predictions overlay the image as a viewer shows it.
* Arrays must be ``(H, W, 3)`` uint8 in RGB order (not OpenCV's BGR: pass ``image[..., ::-1]``),
  values 0-255. Any other dtype is refused rather than cast: floats in [0, 1] would become black,
  int32 300 would wrap to 44.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from masklab.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class InferenceInput:
    """One image to run on: its pixels, where it came from and where its outputs go.

    Attributes:
        image: (3, H, W) uint8 RGB.
        name: output path without ``.png``, relative to ``out_dir/pred`` and ``out_dir/vis``
            (``a/x``, ``a/x.jpg`` beside an ``a/x.png`` input, ``array_0003``).
        file_name: the file read; empty for arrays.
        relative: the file's path relative to the input folder (its file name for a file given
            directly; ``array_0003`` for arrays): ``file_name`` of its entries in ``instances.json``.
    """

    image: torch.Tensor
    name: str
    file_name: str = ""
    relative: str = ""

    @property
    def label(self) -> str:
        """How messages name this input: its file, or ``array input #k``."""
        return self.file_name or f"array input #{int(self.name.removeprefix('array_'))}"


def array_image(array: np.ndarray, index: int) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array as a (3, H, W) tensor; anything else is a one-line DataError."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"input #{index}: expected an (H, W, 3) RGB array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"input #{index}: empty image of shape {array.shape}; expected H, W >= 1")
    if array.dtype != np.uint8:
        try:
            span = f"values {float(array.min()):g}..{float(array.max()):g}"
        except (TypeError, ValueError):
            span = "non-numeric values"
        raise DataError(
            f"input #{index}: array of dtype {array.dtype} with {span}; expected uint8 "
            "RGB values 0-255 (floats in [0, 1]: (image * 255).round().astype(np.uint8))"
        )
    # A copy: the caller's array may be read-only (np.asarray of a PIL image) or change later.
    return torch.from_numpy(np.array(array, order="C", copy=True)).permute(2, 0, 1)


def folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), hidden files and folders skipped."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def collect_inputs(inputs: Any) -> list[InferenceInput]:
    """Expand a path, folder, array or list of them into images, in order (sorted within a folder)."""
    from masklab.data.io import read_image

    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    out: list[InferenceInput] = []
    for k, item in enumerate(items):
        if isinstance(item, np.ndarray):
            name = f"array_{k:04d}"
            out.append(InferenceInput(array_image(item, k), name, "", name))
            continue
        path = Path(item)
        if path.is_dir():
            for f in folder_images(path):
                rel = f.relative_to(path).as_posix()
                out.append(InferenceInput(read_image(f, exif_orientation=True), _stem(rel), str(f), rel))
        elif path.is_file():
            image = read_image(path, exif_orientation=True)
            out.append(InferenceInput(image, _stem(path.name), str(path), path.name))
        else:
            raise DataError(f"{path}: no such image file or folder")
    return _keep_extensions_apart(out)


def _stem(relative: str) -> str:
    return str(PurePosixPath(relative).with_suffix(""))


def _keep_extensions_apart(items: list[InferenceInput]) -> list[InferenceInput]:
    """Inputs whose names differ only by extension (``x.png``, ``x.jpg``) keep it in their name."""
    by_name: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.file_name:
            by_name[item.name].add(item.relative)
    return [
        replace(item, name=item.relative) if item.file_name and len(by_name[item.name]) > 1 else item
        for item in items
    ]


def check_unique_names(items: Sequence[InferenceInput]) -> None:
    """Refuse two inputs whose outputs would overwrite each other (one line naming both)."""
    seen: dict[str, InferenceInput] = {}
    for item in items:
        first = seen.setdefault(item.name, item)
        if first is not item:
            raise DataError(
                f"{first.label} and {item.label}: both would be written as {item.name}.png; "
                "infer them in separate runs (or to separate output folders)"
            )
