"""COCO instance evaluation: AP identical to pycocotools (faster), attribute metrics, joint AP,
per-instance mask IoU, panoptic quality, and the batch-fed :class:`CocoEvaluator`."""

from masklab.evaluation.coco.ap import CocoApResult, evaluate_ap
from masklab.evaluation.coco.params import CocoEvalParams

__all__ = ["CocoApResult", "CocoEvalParams", "evaluate_ap"]
