"""Pictures of dataset samples as the model sees them (after the pipeline), for ``browse-dataset``.

A rendering is the image and, beside it, the same image with the semantic map blended in, instance
masks outlined, boxes drawn (exclusive x2/y2, as stored) and captions with class and attribute
values. Ignored pixels (``ignore_index``) are shown in a hatched grey so that padding and void
areas are visible rather than silently unlabelled.
"""

from __future__ import annotations

import cv2
import numpy as np

from masklab.data.meta import DatasetMeta
from masklab.structures import Instances, Sample
from masklab.visualization.overlay import overlay_semantic, to_hwc_uint8


def render_sample(sample: Sample, meta: DatasetMeta, opacity: float = 0.5) -> np.ndarray:
    """(H, 2W + gap, 3) uint8 RGB: the image, then the image with its labels drawn on it."""
    image = to_hwc_uint8(sample.image)
    view = image.copy()
    if sample.semantic is not None:
        labels = sample.semantic.cpu().numpy()
        view = overlay_semantic(view, labels, meta.palette or (), opacity, meta.ignore_index)
        view = _hatch(view, labels == meta.ignore_index)
    if sample.instances is not None and len(sample.instances):
        view = draw_instances(view, sample.instances, meta, opacity)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([image, gap, view], axis=1)


def _hatch(view: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Grey diagonal stripes over ignored pixels."""
    if not ignored.any():
        return view
    h, w = ignored.shape
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((yy + xx) // 3) % 2 == 0
    out = view.copy()
    out[ignored & stripes] = (128, 128, 128)
    return out


def draw_instances(
    view: np.ndarray, instances: Instances, meta: DatasetMeta, opacity: float = 0.5
) -> np.ndarray:
    """Blend masks in their class colour, outline them, draw boxes and ``class attr=value`` captions.

    Crowd / ignore instances are drawn in grey and captioned ``(ignore)``.
    """
    out = view.astype(np.float32)
    palette = meta.palette or ((255, 255, 255),)
    colours = []
    for i in range(len(instances)):
        label = int(instances.labels[i])
        crowd = bool(instances.ignore[i]) if instances.ignore is not None else False
        colour = (160, 160, 160) if crowd else palette[label % len(palette)]
        colours.append(tuple(int(c) for c in colour))
        mask = instances.masks[i].cpu().numpy().astype(bool)
        out[mask] = (1.0 - opacity) * out[mask] + opacity * np.asarray(colour, np.float32)
    canvas = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    for i, colour in enumerate(colours):
        mask = instances.masks[i].cpu().numpy().astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, 1)
        x1, y1, x2, y2 = (int(round(float(v))) for v in instances.boxes[i])
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, 1)
        cv2.putText(
            canvas,
            instance_label(instances, i, meta),
            (x1, max(8, y1 - 2)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.3,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return canvas


def instance_label(instances: Instances, i: int, meta: DatasetMeta) -> str:
    """``class attr=value ...`` for instance ``i``; ``?`` marks an unlabelled attribute."""
    label = int(instances.labels[i])
    parts = [meta.classes[label] if 0 <= label < meta.num_classes else str(label)]
    known = {a.name: a.values for a in meta.attributes}
    for name, values in instances.attributes.items():
        v = int(values[i])
        names = known.get(name, ())
        parts.append(f"{name}={'?' if v < 0 else (names[v] if v < len(names) else v)}")
    if instances.ignore is not None and bool(instances.ignore[i]):
        parts.append("(ignore)")
    return " ".join(parts)
