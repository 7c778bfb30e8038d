"""Backbones: multi-scale feature extractors exposing ``feature_info``."""

from masklab.models.backbones.base import FeatureInfo
from masklab.models.backbones.mit import MixVisionTransformer
from masklab.models.backbones.timm_backbone import TimmBackbone

__all__ = ["FeatureInfo", "MixVisionTransformer", "TimmBackbone"]
