"""Typed data that flows between modules: samples, batches, model outputs and predictions."""

from masklab.structures.batch import Batch
from masklab.structures.box_crops import BoxCrop, CropWindow, MalBatch
from masklab.structures.instances import Instances
from masklab.structures.predictions import AttributePrediction, InstancePrediction, SemanticPrediction
from masklab.structures.sample import Sample, SampleMeta

__all__ = [
    "AttributePrediction",
    "Batch",
    "BoxCrop",
    "CropWindow",
    "InstancePrediction",
    "Instances",
    "MalBatch",
    "Sample",
    "SampleMeta",
    "SemanticPrediction",
]
