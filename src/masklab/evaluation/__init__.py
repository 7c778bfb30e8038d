"""Evaluators. Importing this package registers them (see ``registries.populate``)."""

from masklab.evaluation import semantic  # noqa: F401 - imported to register IoUMetric
from masklab.evaluation.coco import evaluator as _coco_evaluator  # noqa: F401 - registers CocoEvaluator
