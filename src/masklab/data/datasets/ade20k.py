"""ADE20K (SceneParsing, 150 classes) in the ``ADEChallengeData2016`` layout.

Layout under ``root``::

    images/{training,validation}/ADE_train_00000001.jpg
    annotations/{training,validation}/ADE_train_00000001.png

Stored label 0 means "other" and is not one of the 150 classes, so ``reduce_zero_label`` is on:
0 becomes ``ignore_index`` and every other value shifts down by one (255 stays ignored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from masklab.config.registries import DATASETS
from masklab.data.datasets.layout import under_root
from masklab.data.datasets.semantic import FolderSegDataset, Transform
from masklab.data.meta import DatasetMeta

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

# The colours MMSegmentation draws ADE20K with, so overlays look the same in both tools.
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip

ADE20K_META = DatasetMeta(classes=ADE20K_CLASSES, palette=ADE20K_PALETTE)


@DATASETS.register()
class ADE20KDataset(FolderSegDataset):
    """ADE20K SceneParsing: ``.jpg`` images, ``.png`` labels, ``reduce_zero_label`` on.

    Args:
        img_dir: image folder (default ``root/images/<subset>``); relative paths join ``root``.
        ann_dir: label folder (default ``root/annotations/<subset>``); relative paths join ``root``.
        root: the ``ADEChallengeData2016`` folder.
        subset: ``training`` or ``validation``: the sub-folder used when a folder is derived.
        img_suffix: image file ending.
        seg_map_suffix: label file ending.
        split: optional split file of stems; relative paths join ``root``.
        classes: a subset of the 150 classes (others become ``ignore_index``).
        palette: one colour per class (default: MMSeg's ADE20K colours).
        reduce_zero_label: stored 0 -> ignore, v -> v - 1 (keep True for the official labels).
        label_map: stored value -> training label, applied after ``reduce_zero_label``.
        ignore_index: label value that is not trained on nor evaluated.
        pipeline: transforms applied to each sample, in order.
        labels: False reads the images only (a test split; see :class:`FolderSegDataset`).
    """

    METAINFO = ADE20K_META

    def __init__(
        self,
        img_dir: str | Path | None = None,
        ann_dir: str | Path | None = None,
        *,
        root: str | Path | None = None,
        subset: str = "training",
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        split: str | Path | None = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        reduce_zero_label: bool = True,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        pipeline: Sequence[Transform] = (),
        labels: bool = True,
    ) -> None:
        name = type(self).__name__
        super().__init__(
            under_root(root, img_dir, f"images/{subset}", f"{name}.img_dir"),
            under_root(root, ann_dir, f"annotations/{subset}", f"{name}.ann_dir"),
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            split=None if split is None else under_root(root, split, "", f"{name}.split"),
            classes=classes,
            palette=palette,
            reduce_zero_label=reduce_zero_label,
            label_map=label_map,
            ignore_index=ignore_index,
            pipeline=pipeline,
            labels=labels,
        )
