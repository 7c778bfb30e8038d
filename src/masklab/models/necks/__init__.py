"""Necks: multi-scale feature transforms between a backbone and its heads."""

from masklab.models.necks.fpn import FPN

__all__ = ["FPN"]
