"""Overlays of predictions on images, for people to look at (never for metrics)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from masklab.structures import InstancePrediction


def to_hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) tensor or (H,W,3) array -> contiguous (H,W,3) uint8 RGB array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    return np.ascontiguousarray(image.astype(np.uint8))


def overlay_semantic(
    image: torch.Tensor | np.ndarray,
    label_map: torch.Tensor | np.ndarray,
    palette: Sequence[Sequence[int]],
    opacity: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend a class-coloured label map over the image. Ignored pixels stay untouched."""
    img = to_hwc_uint8(image).astype(np.float32)
    labels = label_map.cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(palette)] = np.asarray(palette, dtype=np.float32)
    colour = lut[np.clip(labels, 0, 255)]
    valid = (labels != ignore_index)[..., None]
    out = np.where(valid, (1.0 - opacity) * img + opacity * colour, img)
    return out.clip(0, 255).astype(np.uint8)


def instance_caption(
    pred: InstancePrediction, i: int, class_names: Sequence[str], value_names: dict[str, Sequence[str]]
) -> str:
    """``class 0.93 color=red pattern=?`` for instance ``i`` (``?`` = unknown attribute)."""
    label = int(pred.labels[i])
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    parts = [f"{name} {float(pred.scores[i]):.2f}"]
    for attr, ap in pred.attributes.items():
        v = int(ap.labels[i])
        names = value_names.get(attr, ())
        parts.append(f"{attr}={names[v] if 0 <= v < len(names) else ('?' if v < 0 else v)}")
    return " ".join(parts)


def overlay_instances(
    image: torch.Tensor | np.ndarray,
    pred: InstancePrediction,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    value_names: dict[str, Sequence[str]] | None = None,
    score_threshold: float = 0.5,
    opacity: float = 0.5,
) -> np.ndarray:
    """Blend each instance's mask in its class colour, outline it and write class + attributes."""
    out = to_hwc_uint8(image).astype(np.float32)
    value_names = value_names or {}
    keep = [i for i in range(len(pred)) if float(pred.scores[i]) >= score_threshold]
    for i in keep:
        mask = pred.masks[i].cpu().numpy().astype(bool)
        colour = np.asarray(palette[int(pred.labels[i]) % len(palette)], dtype=np.float32)
        out[mask] = (1.0 - opacity) * out[mask] + opacity * colour
    canvas = out.clip(0, 255).astype(np.uint8)
    for i in keep:
        mask = pred.masks[i].cpu().numpy().astype(np.uint8)
        colour = tuple(int(c) for c in palette[int(pred.labels[i]) % len(palette)])
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, 1)
        x1, y1 = int(pred.boxes[i, 0]), int(pred.boxes[i, 1])
        text = instance_caption(pred, i, class_names, value_names)
        cv2.putText(
            canvas, text, (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1, cv2.LINE_AA
        )
    return canvas
