"""Segmentation losses: each is an ``nn.Module`` with a ``loss_name`` (its log key)."""

from masklab.models.losses.cross_entropy import CrossEntropyLoss

__all__ = ["CrossEntropyLoss"]
