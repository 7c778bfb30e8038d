"""Panoptic quality (PQ, SQ, RQ; things/stuff) on COCO-panoptic PNG + JSON."""

from masklab.evaluation.panoptic.pq import PQCounts, PQResult, PQSummary, pq_compute, pq_image, summarize_pq
from masklab.evaluation.panoptic.records import (
    PanopticCategory,
    PanopticFile,
    PanopticImage,
    PanopticSegment,
    id_map_to_rgb,
    load_panoptic_json,
    parse_panoptic,
    read_id_map,
)

__all__ = [
    "PQCounts",
    "PQResult",
    "PQSummary",
    "PanopticCategory",
    "PanopticFile",
    "PanopticImage",
    "PanopticSegment",
    "id_map_to_rgb",
    "load_panoptic_json",
    "parse_panoptic",
    "pq_compute",
    "pq_image",
    "read_id_map",
    "summarize_pq",
]
