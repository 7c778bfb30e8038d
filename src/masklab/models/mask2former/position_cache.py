"""Per-size caches of what depends only on a feature map's size: sine position tokens, reference points.

Both are recomputed identically on every forward otherwise (about a dozen small ops per level, each a
thread hand-off on a busy CPU). Entries are keyed by (size, dtype, device), carry no gradient and are
created outside inference mode, so a tensor cached under ``torch.inference_mode()`` can later take part
in a training step. Nothing here is a parameter or buffer: checkpoints do not change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

from masklab.models.layers.position_encoding import PositionEmbeddingSine


class TensorCache:
    """Small LRU map from a hashable key to a tensor built by ``make(key)`` (no grad, not an inference tensor).

    Args:
        make: builds the tensor of a key.
        max_entries: oldest entries are dropped beyond this (multi-scale training sees many sizes).
    """

    def __init__(self, make: Callable[..., torch.Tensor], max_entries: int = 16) -> None:
        self.make = make
        self.max_entries = max_entries
        self.entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def __call__(self, *key: Hashable) -> torch.Tensor:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
            return hit
        with torch.inference_mode(False), torch.no_grad():
            value = self.make(*key)
        self.entries[key] = value
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every entry."""
        self.entries.clear()


def sine_position_tokens(
    pe: PositionEmbeddingSine, h: int, w: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(1, h*w, C) tokens of ``pe`` over an (h, w) map, row-major: ``pe(x).flatten(2).transpose(1, 2)``."""
    probe = torch.empty(1, 0, h, w, dtype=dtype, device=device)
    return pe(probe).flatten(2).transpose(1, 2).contiguous()


def level_reference_points(
    shapes: tuple[tuple[int, int], ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(S, 2) pixel-centre (x, y) of every token of every level, normalised per level."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], -1))
    return torch.cat(points, 0)
