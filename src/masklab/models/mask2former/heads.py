"""Shared prediction heads on the normalised decoder queries: class, mask embedding, attributes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from masklab.errors import ModelError
from masklab.models.layers.linear_relu import linear_relu
from masklab.models.layers.token_views import map_rows
from masklab.models.mask2former.attribute_spec import AttributeSpec


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = linear_relu(layer, x)
        return self.layers[-1](x)


class Mask2FormerHeads(nn.Module):
    """Class head (C + 1), 3-layer mask-embedding MLP and one Linear(hidden, V + 1) per attribute.

    All heads read the same ``decoder_norm``-ed query features and are shared by every prediction
    point. Head widths are derived from ``num_classes`` and the specs; :meth:`validate` re-checks
    them so that a head replaced or loaded with the wrong width fails loudly instead of dropping
    the "no object" slot (the device-side assert users meet elsewhere).

    Args:
        hidden_dim: query width.
        mask_dim: width of the pixel decoder's mask features.
        num_classes: C real classes.
        attributes: attribute specs.
    """

    def __init__(
        self, hidden_dim: int, mask_dim: int, num_classes: int, attributes: Sequence[AttributeSpec]
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.attributes = tuple(attributes)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.attribute_embed = nn.ModuleDict(
            {s.name: nn.Linear(hidden_dim, s.num_outputs) for s in self.attributes}
        )
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ModelError` when a head's width does not match C + 1 / V + 1 or a head is missing."""
        if self.class_embed.out_features != self.num_classes + 1:
            raise ModelError(
                f"model.num_classes: class head has {self.class_embed.out_features} outputs, expected "
                f"{self.num_classes} + 1 (the last is 'no object')"
            )
        names = {s.name for s in self.attributes}
        extra = sorted(set(self.attribute_embed.keys()) - names)
        if extra:
            raise ModelError(f"model.attributes: head {extra[0]!r} has no AttributeSpec")
        for spec in self.attributes:
            head = self.attribute_embed[spec.name] if spec.name in self.attribute_embed else None
            if head is None:
                raise ModelError(f"model.attributes[{spec.name!r}]: no head was built for this attribute")
            width = head.out_features if isinstance(head, nn.Linear) else None
            if width != spec.num_outputs:
                raise ModelError(
                    f"model.attributes[{spec.name!r}]: head has {width} outputs, expected num_values "
                    f"{spec.num_values} + 1 (the last is 'no object')"
                )

    def forward(
        self, queries: torch.Tensor, mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Predict from normalised queries.

        Args:
            queries: (B, Q, d) ``decoder_norm``-ed query features.
            mask_features: (B, mask_dim, H/4, W/4).

        Returns:
            class logits (B, Q, C + 1), mask logits (B, Q, H/4, W/4), attribute logits {name: (B, Q, V + 1)}.
        """
        class_logits = self.class_embed(queries)
        b, _, h, w = mask_features.shape
        # einsum("bqc,bchw->bqhw") as one bmm into (B, Q, H*W): the same product without einsum's copy.
        mask_logits = torch.bmm(self.mask_embed(queries), map_rows(mask_features)).view(b, -1, h, w)
        attrs = {s.name: self.attribute_embed[s.name](queries) for s in self.attributes}
        return class_logits, mask_logits, attrs
