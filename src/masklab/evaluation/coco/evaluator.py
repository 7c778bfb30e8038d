"""The batch-fed COCO evaluator the engine's evaluation hook drives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from masklab.config.registries import EVALUATORS
from masklab.data.coco.load import load_coco
from masklab.data.coco.records import CocoFile
from masklab.data.coco.results import CocoDetection, detections_from_prediction
from masklab.errors import ConfigError
from masklab.evaluation.coco.ap import CocoApResult, evaluate_ap
from masklab.evaluation.coco.attributes import AttributeScores, attribute_scores, joint_ap
from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.report import format_coco_report
from masklab.evaluation.coco.tables import DetTable, GtTable
from masklab.structures import Batch, InstancePrediction


@EVALUATORS.register()
class CocoEvaluator:
    """COCO AP (segm and/or bbox), attribute accuracy/F1 and joint AP, fed batch by batch.

    Each image's predictions are RLE-encoded as soon as :meth:`process` receives them, so memory
    holds compressed masks only. Only the images seen are evaluated. With a process group,
    :meth:`compute` gathers every rank's detections, evaluates on rank 0 and broadcasts the numbers.

    Args:
        gt: ground truth (a :class:`CocoFile` or the path of a COCO instances file).
        iou_types: ``"segm"`` and/or ``"bbox"``.
        max_dets: COCO maxDets; keep the model's top-k equal to the last one.
        attribute_names: attributes to score (default: every attribute of the ground truth).
    """

    def __init__(
        self,
        gt: CocoFile | str | Path,
        *,
        iou_types: Sequence[str] = ("segm",),
        max_dets: Sequence[int] = (1, 10, 100),
        attribute_names: Sequence[str] | None = None,
    ) -> None:
        self.gt = gt if isinstance(gt, CocoFile) else load_coco(gt)
        self.params = [CocoEvalParams(iou_type=t, max_dets=tuple(max_dets)) for t in iou_types]  # type: ignore[arg-type]
        known = [a.name for a in self.gt.attributes]
        self.attribute_names = tuple(known if attribute_names is None else attribute_names)
        for name in self.attribute_names:
            if name not in known:
                raise ConfigError(
                    f"evaluator.attribute_names: {name!r} is not an attribute of {self.gt.path} (known: {known})"
                )
        self.category_ids = self.gt.category_ids
        self._gt_tables: dict[str, GtTable] = {}
        self.results: dict[str, CocoApResult] = {}
        self.attribute_results: list[AttributeScores] = []
        self.metrics: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the detections processed so far."""
        self._dets: list[CocoDetection] = []
        self._image_ids: set[int] = set()

    def process(self, batch: Batch, predictions: list[InstancePrediction]) -> None:
        """RLE-encode one batch's predictions (contiguous labels mapped back to category ids)."""
        del batch  # ground truth comes from the COCO file; predictions carry their image ids
        for pred in predictions:
            if not isinstance(pred, InstancePrediction):
                raise ConfigError(
                    f"model.test_mode: COCO evaluation scores instances but the model predicted "
                    f"{type(pred).__name__}s (per-pixel classes); evaluate with model.test_mode=instance"
                )
            self._image_ids.add(int(pred.meta.image_id))
            self._dets.extend(detections_from_prediction(pred, self.category_ids, self.attribute_names))

    @property
    def metric_description(self) -> str:
        """How the numbers are computed."""
        parts = [p.describe() for p in self.params]
        parts.append("score = the model's ranking score; boxes derived from masks; only processed images")
        if self.attribute_names:
            parts.append(
                "attributes on detections matched at IoU>=0.5 (COCO matching); joint AP over class x attributes"
            )
        return "; ".join(parts)

    def compute(self) -> dict[str, float]:
        """Gather across ranks, evaluate on rank 0; keys ``segm/AP``..., ``attr/<name>/acc``, ``joint/AP``."""
        dets, image_ids = self._dets, sorted(self._image_ids)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[tuple[list[CocoDetection], list[int]] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (dets, image_ids))
            dets = [d for part in gathered for d in part[0]]  # type: ignore[index]
            image_ids = sorted({i for part in gathered for i in part[1]})  # type: ignore[index]
            metrics = [self._evaluate(dets, image_ids) if dist.get_rank() == 0 else {}]
            dist.broadcast_object_list(metrics, src=0)
            self.metrics = metrics[0]
        else:
            self.metrics = self._evaluate(dets, image_ids)
        return self.metrics

    def _evaluate(self, dets: list[CocoDetection], image_ids: list[int]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        self.results = {}
        for params in self.params:
            if params.iou_type not in self._gt_tables:
                self._gt_tables[params.iou_type] = GtTable.from_coco(self.gt, params.iou_type)
            gt_table = self._gt_tables[params.iou_type]
            dt_table = DetTable.from_detections(dets, params.iou_type)
            result = evaluate_ap(
                gt_table, dt_table, params, image_ids=image_ids, category_ids=self.category_ids
            )
            self.results[params.iou_type] = result
            metrics.update({f"{params.iou_type}/{k}": v for k, v in result.stats.items()})
            if params is self.params[0] and self.attribute_names:
                self.attribute_results = attribute_scores(self.gt, dets, result, self.attribute_names)
                for s in self.attribute_results:
                    metrics[f"attr/{s.name}/acc"] = s.accuracy
                    metrics[f"attr/{s.name}/f1"] = s.macro_f1
                joint = joint_ap(self.gt, gt_table, dets, dt_table, params, image_ids, self.attribute_names)
                metrics["joint/AP"] = joint.stats["AP"]
                metrics["joint/AP50"] = joint.stats["AP50"]
        return metrics

    def format_report(self) -> str:
        """A console table of the last :meth:`compute`."""
        names = {c.id: c.name for c in self.gt.categories}
        return format_coco_report(
            self.results, names, self.attribute_results, self.metrics, self.metric_description
        )
