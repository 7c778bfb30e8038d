"""Per-image training targets of Mask2Former, derived from ``Instances``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from masklab.structures import Instances


@dataclass
class Mask2FormerTargets:
    """The objects of one image that the matcher and criterion see (crowd/ignore instances removed).

    Attributes:
        labels: (G,) int64 classes in [0, C).
        masks: (G, H, W) float masks at the padded input resolution.
        attributes: name -> (G,) int64 values in [0, V) or -1 (unlabelled: no cost, no loss).
    """

    labels: torch.Tensor
    masks: torch.Tensor
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = int(self.labels.shape[0])
        assert self.masks.ndim == 3 and self.masks.shape[0] == g
        for name, values in self.attributes.items():
            assert values.shape == (g,), f"attribute {name!r}: {tuple(values.shape)} vs {g}"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_batch(
        cls, instances: list[Instances], attribute_names: tuple[str, ...]
    ) -> list[Mask2FormerTargets]:
        """:meth:`from_instances` of every image, reading the ignore flags of the batch in one host
        copy: when no object of the batch is ignored (the usual case) every image is taken whole,
        without the boolean indexing that would synchronise a CUDA stream once per image."""
        flags = [inst.ignore for inst in instances if inst.ignore is not None and len(inst)]
        any_ignored = bool(torch.cat(flags).bool().any()) if flags else False
        return [cls.from_instances(inst, attribute_names, whole=not any_ignored) for inst in instances]

    @classmethod
    def from_instances(
        cls, instances: Instances, attribute_names: tuple[str, ...], *, whole: bool = False
    ) -> Mask2FormerTargets:
        """Keep non-ignored objects; unlabelled or absent attributes become -1.

        ``whole``: the caller knows no object is ignored (skips the boolean selection).
        """
        if whole or instances.ignore is None:
            kept = instances
        else:
            kept = instances[~instances.ignore.bool()]
        n = len(kept)
        attrs = {
            name: (
                kept.attributes[name].long()
                if name in kept.attributes
                else torch.full((n,), -1, dtype=torch.long, device=kept.labels.device)
            )
            for name in attribute_names
        }
        return cls(labels=kept.labels.long(), masks=kept.masks.float(), attributes=attrs)
