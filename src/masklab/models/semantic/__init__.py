"""Semantic segmentation: the encoder-decoder segmentor and its decode heads."""

from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.encoder_decoder import EncoderDecoder, TTASettings
from masklab.models.semantic.fcn_head import FCNHead

__all__ = ["DecodeHead", "EncoderDecoder", "FCNHead", "TTASettings"]
