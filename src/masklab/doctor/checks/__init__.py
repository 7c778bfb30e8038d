"""Built-in doctor checks, one small module per family; importing this package registers them."""

from masklab.doctor.checks import config, data_coco, data_labels, data_splits, model, transforms

__all__ = ["config", "data_coco", "data_labels", "data_splits", "model", "transforms"]
