"""Segmentation losses: each is an ``nn.Module`` with a ``loss_name`` (its log key)."""

from masklab.models.losses.cross_entropy import CrossEntropyLoss
from masklab.models.losses.dice import DiceLoss
from masklab.models.losses.focal import FocalLoss
from masklab.models.losses.lovasz import LovaszLoss
from masklab.models.losses.ohem import OHEMPixelSampler

__all__ = ["CrossEntropyLoss", "DiceLoss", "FocalLoss", "LovaszLoss", "OHEMPixelSampler"]
