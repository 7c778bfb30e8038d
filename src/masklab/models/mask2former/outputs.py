"""Typed outputs of the Mask2Former transformer decoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Mask2FormerLayerOutput:
    """The predictions of one prediction point (the query input or one decoder layer).

    Attributes:
        class_logits: (B, Q, C + 1); the last slot (index C) is "no object".
        mask_logits: (B, Q, H/4, W/4) mask logits at the resolution of the mask features.
        attribute_logits: attribute name -> (B, Q, V + 1); the last slot (index V) is "no object".
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    attribute_logits: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b, q = self.class_logits.shape[:2]
        assert self.mask_logits.shape[:2] == (b, q), (
            f"mask logits {tuple(self.mask_logits.shape)} vs {(b, q)}"
        )
        for name, logits in self.attribute_logits.items():
            assert logits.shape[:2] == (b, q), f"attribute {name!r} logits {tuple(logits.shape)} vs {(b, q)}"

    def split(self, first: int) -> tuple[Mask2FormerLayerOutput, Mask2FormerLayerOutput]:
        """The first ``first`` queries' predictions and the rest's (pilot queries come first)."""
        return self._queries(slice(None, first)), self._queries(slice(first, None))

    def _queries(self, which: slice) -> Mask2FormerLayerOutput:
        return Mask2FormerLayerOutput(
            self.class_logits[:, which],
            self.mask_logits[:, which],
            {n: v[:, which] for n, v in self.attribute_logits.items()},
        )


@dataclass
class PilotOutput:
    """The pilot queries' predictions of a mask-piloted training forward (see :mod:`.mask_piloting`).

    Attributes:
        layers: one :class:`Mask2FormerLayerOutput` per prediction point, like the learned queries'.
        indices: per image, (pilot index, object index) pairs: each pilot's fixed target.
        groups: copies of every object (the pilot losses are normalised by objects x groups).
        loss_weight: multiplies every pilot loss.
    """

    layers: list[Mask2FormerLayerOutput]
    indices: list[tuple[torch.Tensor, torch.Tensor]]
    groups: int
    loss_weight: float


@dataclass
class Mask2FormerOutput:
    """All prediction points of one forward, in order: query input, then decoder layer 1..N.

    With N decoder layers there are N + 1 entries (10 for the paper's 9 layers); every entry is
    supervised (deep supervision) and ``layers[-1]`` is the prediction used at inference.

    Attributes:
        layers: the :class:`Mask2FormerLayerOutput` of each prediction point.
        pilots: the pilot queries' predictions when the forward was mask-piloted (training only).
    """

    layers: list[Mask2FormerLayerOutput]
    pilots: PilotOutput | None = None

    @property
    def last(self) -> Mask2FormerLayerOutput:
        """The final prediction (after the last decoder layer)."""
        return self.layers[-1]
