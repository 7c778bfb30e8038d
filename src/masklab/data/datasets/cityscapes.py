"""Cityscapes with ``labelTrainIds`` label maps (19 classes), in the official folder layout.

Layout under ``root``::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

The ``labelTrainIds`` files come from cityscapesscripts' ``createTrainIdLabelImgs``. Raw
``_gtFine_labelIds.png`` maps work too with ``seg_map_suffix="_gtFine_labelIds.png"`` and
``label_map=CITYSCAPES_LABEL_ID_TO_TRAIN_ID``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from masklab.config.registries import DATASETS
from masklab.data.datasets.layout import under_root
from masklab.data.datasets.semantic import FolderSegDataset, Transform
from masklab.data.meta import DatasetMeta

CITYSCAPES_META = DatasetMeta(
    classes=(
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ),  # fmt: skip
    palette=(
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ),  # fmt: skip
)

# The official labelId -> trainId table for the 19 evaluated classes; every other id is ignored.
_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    label_id: (_TRAIN_LABEL_IDS.index(label_id) if label_id in _TRAIN_LABEL_IDS else 255)
    for label_id in range(34)
}


@DATASETS.register()
class CityscapesDataset(FolderSegDataset):
    """Cityscapes fine annotations as 19 train ids; images are discovered in the city subfolders.

    Args:
        img_dir: image folder (default ``root/leftImg8bit/<subset>``); relative paths join ``root``.
        ann_dir: label folder (default ``root/gtFine/<subset>``); relative paths join ``root``.
        root: the Cityscapes folder (holding ``leftImg8bit/`` and ``gtFine/``).
        subset: ``train``, ``val`` or ``test``: the sub-folder used when a folder is derived.
        img_suffix: image file ending.
        seg_map_suffix: label file ending.
        split: optional split file of stems (``<city>/<city>_<seq>_<frame>``); relative joins ``root``.
        classes: a subset of the 19 classes (others become ``ignore_index``).
        palette: one colour per class (default: the official colours).
        label_map: stored value -> train id (e.g. :data:`CITYSCAPES_LABEL_ID_TO_TRAIN_ID`).
        ignore_index: label value that is not trained on nor evaluated.
        pipeline: transforms applied to each sample, in order.
        labels: False reads the images only (a test split; see :class:`FolderSegDataset`).
    """

    METAINFO = CITYSCAPES_META

    def __init__(
        self,
        img_dir: str | Path | None = None,
        ann_dir: str | Path | None = None,
        *,
        root: str | Path | None = None,
        subset: str = "train",
        img_suffix: str = "_leftImg8bit.png",
        seg_map_suffix: str = "_gtFine_labelTrainIds.png",
        split: str | Path | None = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        pipeline: Sequence[Transform] = (),
        labels: bool = True,
    ) -> None:
        name = type(self).__name__
        super().__init__(
            under_root(root, img_dir, f"leftImg8bit/{subset}", f"{name}.img_dir"),
            under_root(root, ann_dir, f"gtFine/{subset}", f"{name}.ann_dir"),
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            split=None if split is None else under_root(root, split, "", f"{name}.split"),
            classes=classes,
            palette=palette,
            label_map=label_map,
            ignore_index=ignore_index,
            pipeline=pipeline,
            labels=labels,
        )
