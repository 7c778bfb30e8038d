"""COCO instances I/O: typed records, validated loading, RLE helpers and the results writer."""

from masklab.data.coco.load import load_coco, parse_coco, read_json
from masklab.data.coco.records import CocoAnnotation, CocoCategory, CocoFile, CocoImage, CocoSkipCounts
from masklab.data.coco.rle import ann_to_mask, ann_to_rle, encode_masks, segmentation_to_rle

__all__ = [
    "CocoAnnotation",
    "CocoCategory",
    "CocoFile",
    "CocoImage",
    "CocoSkipCounts",
    "ann_to_mask",
    "ann_to_rle",
    "encode_masks",
    "load_coco",
    "parse_coco",
    "read_json",
    "segmentation_to_rle",
]
