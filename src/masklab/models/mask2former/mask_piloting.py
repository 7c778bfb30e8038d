"""Mask-piloted training of the Mask2Former decoder (MP-Former, Zhang et al., CVPR 2023).

During training, extra "pilot" queries are appended to the learned ones: one per ground-truth object
(times ``groups``), whose content is the embedding of the object's class (replaced by a random class
with probability ``label_noise``) and whose masked cross-attention, at every decoder layer, is
restricted to the object's ground-truth mask resized to that layer's level (each position flipped with
probability ``point_noise`` x area / level size) instead of the previous layer's prediction. Each pilot
query is supervised by its own object with the ordinary class / mask / attribute losses, no matching.
The learned queries cannot see the pilots in self-attention and pilot groups cannot see each other, so
the learned queries' forward (and inference, which never builds pilots) is the plain Mask2Former's.

What it buys: the decoder layers and the shared heads get a clean signal from the first step on, the
features inside the true mask paired with the true class, instead of waiting for the Hungarian
assignment of a still-random decoder to settle. With ``label_noise`` > 0 the pilot queries must also
correct a wrong class from what they attend, which trains classification of attended regions directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklab.errors import ModelError
from masklab.models.mask2former.targets import Mask2FormerTargets


@dataclass(frozen=True)
class MaskPilotingConfig:
    """Settings of mask piloting (``model.decoder.mask_piloting`` in a config).

    Attributes:
        groups: copies of every object's pilot query (MP-Former's ``scalar``).
        label_noise: probability of replacing a pilot's class embedding by a random class's.
        point_noise: expected share of the object's area flipped in each pilot attention mask
            (MP-Former's point noise; 0 = the exact ground-truth mask).
        loss_weight: multiplies every pilot loss (on top of the ordinary loss weights).
    """

    groups: int = 1
    label_noise: float = 0.0
    point_noise: float = 0.0
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ModelError(
                f"model.decoder.mask_piloting.groups: expected an integer >= 1, got {self.groups!r}"
            )
        for key in ("label_noise", "point_noise"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ModelError(
                    f"model.decoder.mask_piloting.{key}: expected a value in [0, 1], got {value}"
                )
        if self.loss_weight < 0:
            raise ModelError(
                f"model.decoder.mask_piloting.loss_weight: expected >= 0, got {self.loss_weight}"
            )

    @classmethod
    def of(cls, settings: MaskPilotingConfig | Mapping[str, Any]) -> MaskPilotingConfig:
        """``settings`` as a config; a mapping with an unknown key is a one-line :class:`ModelError`."""
        if isinstance(settings, cls):
            return settings
        if not isinstance(settings, Mapping):
            raise ModelError(f"model.decoder.mask_piloting: expected a mapping or null, got {settings!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ModelError(f"model.decoder.mask_piloting: unknown key {unknown[0]!r} (keys: {known})")
        return cls(**settings)


@dataclass
class PilotQueries:
    """The pilot part of one training forward.

    Attributes:
        content: (B, P, d) initial query features (P = groups x the most objects of one image; an image
            with fewer objects leaves zero "padding" pilots, supervised as "no object").
        blocked: per decoder level, (B, P, H_l * W_l) bool, True = this pilot may not attend there.
        self_attn_bias: (P + Q, P + Q) additive self-attention mask over [pilots, learned queries]
            (``-inf`` = blocked): learned queries do not see pilots, groups do not see each other.
        indices: per image, (pilot index, object index) pairs: what each pilot query is supervised by.
        groups: copies of every object.
    """

    content: torch.Tensor
    blocked: list[torch.Tensor]
    self_attn_bias: torch.Tensor
    indices: list[tuple[torch.Tensor, torch.Tensor]]
    groups: int

    @property
    def num_pilots(self) -> int:
        return int(self.content.shape[1])


class MaskPiloting(nn.Module):
    """Builds :class:`PilotQueries` from a batch's targets (training only).

    Args:
        num_classes: C real classes.
        hidden_dim: query width d.
        config: the settings (a :class:`MaskPilotingConfig` or a mapping of its fields).
    """

    def __init__(
        self, num_classes: int, hidden_dim: int, config: MaskPilotingConfig | Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        config = MaskPilotingConfig() if config is None else MaskPilotingConfig.of(config)
        self.num_classes = num_classes
        self.groups = config.groups
        self.label_noise = config.label_noise
        self.point_noise = config.point_noise
        self.loss_weight = config.loss_weight
        self.label_embed = nn.Embedding(num_classes, hidden_dim)

    def forward(
        self,
        targets: Sequence[Mask2FormerTargets],
        level_sizes: Sequence[tuple[int, int]],
        num_queries: int,
    ) -> PilotQueries | None:
        """Pilot queries for ``targets`` (masks at the padded input size), or None for a batch without
        objects. ``level_sizes``: the decoder's memory levels (each must divide the mask size)."""
        counts = [len(t) for t in targets]
        most = max(counts, default=0)
        if most == 0:
            return None
        device = self.label_embed.weight.device
        b, g = len(targets), self.groups
        slots = g * most
        # Every object once per group, group-major: (image, slot) of its pilot and its (noised) label.
        image = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(counts)])
        within = torch.cat([torch.arange(n) for n in counts])
        group_offset = torch.arange(g).repeat_interleave(len(image)) * most
        # One non-blocking copy of each index (a blocking host-to-device copy synchronises a CUDA stream).
        img_all = image.repeat(g).to(device, non_blocking=True)
        slot_all = (within.repeat(g) + group_offset).to(device, non_blocking=True)
        labels = torch.cat([t.labels for t in targets]).to(device).repeat(g)
        if self.training and self.label_noise > 0:
            flip = torch.rand(labels.shape, device=device) < self.label_noise
            labels = torch.where(flip, torch.randint_like(labels, self.num_classes), labels)
        content = self.label_embed.weight.new_zeros(b, slots, self.label_embed.embedding_dim)
        content = content.index_put((img_all, slot_all), self.label_embed(labels))
        masks = torch.cat([t.masks for t in targets]).to(device)
        blocked = [self._level_mask(masks, size, img_all, slot_all, b, slots) for size in level_sizes]
        indices = []
        for n in counts:
            obj = torch.arange(n)
            pilot = (torch.arange(g).unsqueeze(1) * most + obj).flatten()
            indices.append((pilot, obj.repeat(g)))
        return PilotQueries(content, blocked, self._self_attn_bias(g, most, num_queries, device), indices, g)

    def _level_mask(
        self,
        masks: torch.Tensor,
        size: tuple[int, int],
        img_all: torch.Tensor,
        slot_all: torch.Tensor,
        batch: int,
        slots: int,
    ) -> torch.Tensor:
        """(B, P, S) blocked positions at one level: outside the object's mask resized by area (a cell
        any part of the object touches is open), with point noise; padding pilots blocked everywhere
        (the decoder then releases them, as for any fully blocked query)."""
        h, w = masks.shape[-2:]
        if h % size[0] or w % size[1]:
            raise ModelError(
                f"mask piloting: ground-truth masks {h}x{w} do not divide into the decoder level {size}"
            )
        with torch.no_grad():
            area = F.avg_pool2d(masks.unsqueeze(1), (h // size[0], w // size[1])).flatten(1)  # (T, S)
            inside = (area > 0).repeat(self.groups, 1)  # group-major, like img_all / slot_all
            if self.training and self.point_noise > 0:  # drawn per group: each copy has its own noise
                cells = inside.shape[1]
                prob = inside.sum(1, keepdim=True) * (self.point_noise / cells)
                inside = inside ^ (torch.rand(inside.shape, device=inside.device) < prob)
            blocked = torch.ones(batch, slots, inside.shape[1], dtype=torch.bool, device=masks.device)
            blocked[img_all, slot_all] = ~inside
        return blocked

    @staticmethod
    def _self_attn_bias(groups: int, most: int, num_queries: int, device: torch.device) -> torch.Tensor:
        """Additive (P + Q, P + Q) mask: pilots first, then the learned queries."""
        p = groups * most
        blocked = torch.zeros(p + num_queries, p + num_queries, dtype=torch.bool, device=device)
        blocked[p:, :p] = True  # learned queries never see the pilots
        group = torch.arange(p, device=device) // most
        blocked[:p, :p] = group.unsqueeze(1) != group.unsqueeze(0)  # groups do not see each other
        bias = torch.zeros(blocked.shape, device=device)
        return bias.masked_fill_(blocked, float("-inf"))
