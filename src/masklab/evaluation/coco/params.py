"""Settings of COCO AP evaluation (pycocotools' ``Params`` for segm/bbox, as a typed value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from masklab.errors import ConfigError

IouType = Literal["segm", "bbox"]


def _iou_thrs() -> np.ndarray:
    # Built exactly as pycocotools does so that threshold floats (and AP75 lookups) are bit-identical.
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def _rec_thrs() -> np.ndarray:
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def max_dets_for(top_k: int) -> tuple[int, ...]:
    """COCO's maxDets ladder ending at a model's top-k: 1 and 10 where they are below it
    (20 gives 1, 10, 20; 10 gives 1, 10; 7 gives 1, 7), since the ladder must increase."""
    return (*(m for m in (1, 10) if m < top_k), top_k)


@dataclass(frozen=True)
class CocoEvalParams:
    """How COCO AP is computed.

    Attributes:
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"``.
        max_dets: detections kept per image and category, ascending; the last one drives AP.
        iou_thrs: IoU thresholds (0.50:0.05:0.95).
        rec_thrs: recall points of the interpolated precision (101).
        area_rngs: area ranges ``all, small, medium, large``.
        area_labels: their names.
    """

    iou_type: IouType = "segm"
    max_dets: tuple[int, ...] = (1, 10, 100)
    iou_thrs: np.ndarray = field(default_factory=_iou_thrs)
    rec_thrs: np.ndarray = field(default_factory=_rec_thrs)
    area_rngs: tuple[tuple[float, float], ...] = (
        (0.0, 1e5**2),
        (0.0, 32.0**2),
        (32.0**2, 96.0**2),
        (96.0**2, 1e5**2),
    )
    area_labels: tuple[str, ...] = ("all", "small", "medium", "large")

    def __post_init__(self) -> None:
        if self.iou_type not in ("segm", "bbox"):
            raise ConfigError(f"iou_type={self.iou_type!r}; expected 'segm' or 'bbox'")
        md = tuple(int(m) for m in self.max_dets)
        if not md or any(m <= 0 for m in md) or list(md) != sorted(set(md)):
            raise ConfigError(
                f"max_dets={self.max_dets!r}; expected increasing positive integers, e.g. 1 10 100"
            )
        object.__setattr__(self, "max_dets", md)

    def describe(self) -> str:
        """One line saying how the numbers were computed."""
        return (
            f"COCO {self.iou_type} AP, IoU 0.50:0.95, maxDets {list(self.max_dets)}, 101-point interpolation"
        )
