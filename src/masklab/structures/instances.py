"""Per-image instance annotations: equal-length fields over N objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Instances:
    """The objects of one image. Every field has length N (checked in ``__post_init__``).

    Attributes:
        masks: (N, H, W) bool instance masks at the image's current resolution.
        boxes: (N, 4) float32 boxes, absolute ``x1, y1, x2, y2`` pixels (x2/y2 exclusive, so a
            one-pixel object at column 3 spans 3..4). After geometric transforms boxes are
            recomputed from masks where masks exist.
        labels: (N,) int64 contiguous training labels in ``[0, num_classes)``.
        attributes: attribute name -> (N,) int64 value ids; ``-1`` marks "not labelled".
        ignore: (N,) bool, True for crowd / ignore regions (never matched as positives).
        ids: (N,) int64 source annotation ids (-1 when unknown); carried for box-conditioned
            outputs such as MAL pseudo-labels.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    ignore: torch.Tensor | None = None
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0])
        if self.ignore is None:
            self.ignore = torch.zeros(n, dtype=torch.bool, device=self.labels.device)
        if self.ids is None:
            self.ids = torch.full((n,), -1, dtype=torch.int64, device=self.labels.device)
        assert self.masks.ndim == 3 and self.masks.shape[0] == n, (
            f"masks {tuple(self.masks.shape)} vs {n} labels"
        )
        assert self.boxes.shape == (n, 4), f"boxes {tuple(self.boxes.shape)} vs {n} labels"
        assert self.ignore.shape == (n,) and self.ids.shape == (n,)
        for name, values in self.attributes.items():
            assert values.shape == (n,), (
                f"attribute {name!r} has shape {tuple(values.shape)}, expected ({n},)"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the masks."""
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    @classmethod
    def empty(cls, height: int, width: int, attribute_names: tuple[str, ...] = ()) -> Instances:
        """No objects, at an image size of ``height`` x ``width``."""
        return cls(
            masks=torch.zeros((0, height, width), dtype=torch.bool),
            boxes=torch.zeros((0, 4), dtype=torch.float32),
            labels=torch.zeros((0,), dtype=torch.int64),
            attributes={name: torch.zeros((0,), dtype=torch.int64) for name in attribute_names},
        )

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Instances:
        """A new Instances with ``fn`` applied to every per-object tensor."""
        return Instances(
            masks=fn(self.masks),
            boxes=fn(self.boxes),
            labels=fn(self.labels),
            attributes={k: fn(v) for k, v in self.attributes.items()},
            ignore=fn(self.ignore),
            ids=fn(self.ids),
        )

    def __getitem__(self, index: torch.Tensor | slice | list[int]) -> Instances:
        """Select a subset of objects (boolean mask, index tensor, list or slice)."""
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Instances:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Instances:
        """Page-locked copies (the DataLoader's ``pin_memory`` calls this), for asynchronous device copies."""
        return self._map(torch.Tensor.pin_memory)

    def boxes_from_masks(self) -> torch.Tensor:
        """(N, 4) tight ``x1, y1, x2, y2`` boxes of the masks (zeros for empty masks)."""
        return masks_to_boxes(self.masks)

    def non_empty(self) -> Instances:
        """Drop objects whose mask has no pixel (e.g. cropped away)."""
        keep = self.masks.flatten(1).any(dim=1) if len(self) else torch.zeros(0, dtype=torch.bool)
        return self[keep]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of (N, H, W) masks as ``x1, y1, x2, y2`` with exclusive x2/y2; empty masks give zeros."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    m = masks.bool()
    rows = m.any(dim=2)  # (N, H)
    cols = m.any(dim=1)  # (N, W)
    h, w = m.shape[-2:]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    big = max(h, w) + 1
    y1 = torch.where(rows, ar_h, big).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, ar_w, big).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    empty = ~rows.any(dim=1)
    boxes[empty] = 0.0
    return boxes
