"""Datasets; importing this package registers them in DATASETS."""

from masklab.data.datasets import box_crops as _box_crops  # noqa: F401  (registers BoxCropDataset)
from masklab.data.datasets import coco as _coco  # noqa: F401  (registers CocoInstanceDataset)
from masklab.data.datasets import semantic as _semantic  # noqa: F401  (registers FolderSegDataset, SyntheticSemanticDataset)
