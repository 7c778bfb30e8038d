"""Mask2Former with per-query attribute heads."""

from masklab.models.mask2former.attribute_spec import AttributeSpec
from masklab.models.mask2former.criterion import Mask2FormerCriterion
from masklab.models.mask2former.decoder import Mask2FormerTransformerDecoder
from masklab.models.mask2former.matcher import Mask2FormerMatcher
from masklab.models.mask2former.model import Mask2Former
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput, Mask2FormerOutput
from masklab.models.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from masklab.models.mask2former.postprocess import Mask2FormerPostProcessor

__all__ = [
    "AttributeSpec",
    "MSDeformAttnPixelDecoder",
    "Mask2Former",
    "Mask2FormerCriterion",
    "Mask2FormerLayerOutput",
    "Mask2FormerMatcher",
    "Mask2FormerOutput",
    "Mask2FormerPostProcessor",
    "Mask2FormerTransformerDecoder",
]
