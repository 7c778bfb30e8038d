"""Shelf packing of many small image regions into one canvas, for batched per-region image work.

The labeling refinement works on each box's own pixels at image resolution. Boxes differ in size,
so padded (K, Hb, Wb) slots waste about half their pixels on a typical batch (measured 2.0x the
regions' area on the synthetic val boxes); one canvas holding every region, separated by a gap
wider than the neighbourhood the work reads, wastes about a quarter and runs each operation once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Atlas", "pack_regions"]


@dataclass(frozen=True)
class Atlas:
    """Where each region lies in the canvas.

    Attributes:
        height: canvas rows.
        width: canvas columns.
        origins: top-left ``(row, col)`` of each region, in input order.
    """

    height: int
    width: int
    origins: tuple[tuple[int, int], ...]


def pack_regions(sizes: Sequence[tuple[int, int]], gap: int) -> Atlas:
    """Pack regions of ``(height, width)`` pixels into rows ("shelves") of a near-square canvas,
    tallest first, with at least ``gap`` empty pixels between any two regions.

    Args:
        sizes: each region's ``(height, width)`` (>= 1 each).
        gap: empty pixels between neighbouring regions (>= 0); the canvas border needs none.
    """
    if not sizes:
        return Atlas(0, 0, ())
    if gap < 0 or any(h < 1 or w < 1 for h, w in sizes):
        raise ValueError(f"pack_regions: expected sizes >= 1 and gap >= 0, got {list(sizes)}, {gap}")
    area = sum((h + gap) * (w + gap) for h, w in sizes)
    limit = max(max(w for _, w in sizes), math.ceil(math.sqrt(area)))
    origins: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    row = col = shelf = width = 0
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i][0]):
        h, w = sizes[i]
        if col > 0 and col + w > limit:  # next shelf
            row, col, shelf = row + shelf + gap, 0, 0
        origins[i] = (row, col)
        width = max(width, col + w)
        col += w + gap
        shelf = max(shelf, h)
    return Atlas(row + shelf, width, tuple(origins))
