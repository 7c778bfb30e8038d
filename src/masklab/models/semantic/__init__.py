"""Semantic segmentation: the encoder-decoder segmentor and its decode heads."""

from masklab.models.semantic.aspp_head import ASPPHead
from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.encoder_decoder import EncoderDecoder, TTASettings
from masklab.models.semantic.fcn_head import FCNHead
from masklab.models.semantic.fpn_head import FPNHead
from masklab.models.semantic.psp_head import PSPHead
from masklab.models.semantic.segformer_head import SegformerHead
from masklab.models.semantic.sep_aspp_head import DepthwiseSeparableASPPHead
from masklab.models.semantic.uper_head import UPerHead

__all__ = [
    "ASPPHead",
    "DecodeHead",
    "DepthwiseSeparableASPPHead",
    "EncoderDecoder",
    "FCNHead",
    "FPNHead",
    "PSPHead",
    "SegformerHead",
    "TTASettings",
    "UPerHead",
]
