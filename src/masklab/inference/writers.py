"""Writers of predictions: label PNGs and overlay pictures, each written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from masklab.atomic_files import atomic_path


def _atomic_save(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_label_png(path: str | Path, label_map: torch.Tensor | np.ndarray) -> Path:
    """Save class ids as an 8-bit single-channel PNG (the format every semseg dataset uses)."""
    labels = label_map.cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError(f"label ids must fit in 0..255 for a PNG, got {labels.min()}..{labels.max()}")
    path = Path(path)
    _atomic_save(Image.fromarray(labels.astype(np.uint8), mode="L"), path)
    return path


def write_rgb_png(path: str | Path, array: np.ndarray) -> Path:
    """Save an (H,W,3) uint8 RGB picture."""
    path = Path(path)
    _atomic_save(Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)), mode="RGB"), path)
    return path
