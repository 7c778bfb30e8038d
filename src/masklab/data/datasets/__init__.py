"""Datasets; importing this package registers them in DATASETS."""

from masklab.data.datasets import ade20k as _ade20k  # noqa: F401  (registers ADE20KDataset)
from masklab.data.datasets import box_crops as _box_crops  # noqa: F401  (registers BoxCropDataset)
from masklab.data.datasets import cityscapes as _cityscapes  # noqa: F401  (registers CityscapesDataset)
from masklab.data.datasets import coco as _coco  # noqa: F401  (registers CocoInstanceDataset)
from masklab.data.datasets import semantic as _semantic  # noqa: F401  (registers FolderSegDataset, SyntheticSemanticDataset)
from masklab.data.datasets import voc as _voc  # noqa: F401  (registers VOCDataset)
