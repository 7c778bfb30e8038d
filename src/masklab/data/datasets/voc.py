"""Pascal VOC 2012 segmentation (21 classes with background), with split files and the SBD "aug" set.

Layout under ``root`` (``VOCdevkit/VOC2012``)::

    JPEGImages/2007_000032.jpg
    SegmentationClass/2007_000032.png        palette PNG whose indices are the class ids
    SegmentationClassAug/2008_000002.png     SBD-derived masks (only for the aug set)
    ImageSets/Segmentation/{train,val,trainval,aug}.txt

``subset="aug"`` joins ``train.txt`` (labels in ``SegmentationClass``) with ``aug.txt`` (labels in
``SegmentationClassAug``), like MMSeg's "voc12aug" ``ConcatDataset``: duplicates are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from masklab.config.registries import DATASETS
from masklab.data.datasets.layout import under_root
from masklab.data.datasets.semantic import FolderSegDataset, Transform
from masklab.data.meta import DatasetMeta
from masklab.errors import DataError

PathLike = str | Path


def voc_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The VOC devkit colour map: the bits of the class id spread over R, G, B, high bit first."""
    palette = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)


VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_META = DatasetMeta(classes=VOC_CLASSES, palette=voc_palette(len(VOC_CLASSES)))

_SPLIT_DIR = "ImageSets/Segmentation"


def _as_list(value: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [value] if isinstance(value, (str, Path)) else list(value)


@DATASETS.register()
class VOCDataset(FolderSegDataset):
    """Pascal VOC 2012: images listed by one or several split files, each with its label folder.

    Args:
        img_dir: image folder (default ``root/JPEGImages``); relative paths join ``root``.
        ann_dir: label folder, or one per split file (default ``SegmentationClass``, plus
            ``SegmentationClassAug`` for ``aug.txt`` when ``subset="aug"``).
        root: the ``VOC2012`` folder.
        subset: ``train``, ``val``, ``trainval`` (``ImageSets/Segmentation/<subset>.txt``) or ``aug``
            (``train.txt`` + ``aug.txt``); used only when ``split`` is not given.
        img_suffix: image file ending.
        seg_map_suffix: label file ending.
        split: a split file or a list of split files whose stems are joined in order; relative
            paths join ``root``. Without ``root`` or ``split`` every image under ``img_dir`` is used.
        classes: a subset of the 21 classes (others become ``ignore_index``).
        palette: one colour per class (default: the VOC devkit colours).
        label_map: stored value -> training label.
        ignore_index: label value that is not trained on nor evaluated (VOC borders are 255).
        pipeline: transforms applied to each sample, in order.
    """

    METAINFO = VOC_META

    def __init__(
        self,
        img_dir: PathLike | None = None,
        ann_dir: PathLike | Sequence[PathLike] | None = None,
        *,
        root: PathLike | None = None,
        subset: str = "train",
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        split: PathLike | Sequence[PathLike] | None = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        pipeline: Sequence[Transform] = (),
    ) -> None:
        name = type(self).__name__
        splits, ann_dirs = self._layout(root, subset, split, ann_dir)
        self._splits = [under_root(root, s, "", f"{name}.split") for s in splits]
        self._ann_dirs = [under_root(root, a, "", f"{name}.ann_dir") for a in ann_dirs]
        if len(self._ann_dirs) != max(1, len(self._splits)):
            raise DataError(
                f"{name}.ann_dir: {len(self._ann_dirs)} folders for {len(self._splits)} split files; "
                "give one folder, or one per split file"
            )
        super().__init__(
            under_root(root, img_dir, "JPEGImages", f"{name}.img_dir"),
            self._ann_dirs[0],
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            split=None,
            classes=classes,
            palette=palette,
            label_map=label_map,
            ignore_index=ignore_index,
            pipeline=pipeline,
        )

    @staticmethod
    def _layout(
        root: PathLike | None,
        subset: str,
        split: PathLike | Sequence[PathLike] | None,
        ann_dir: PathLike | Sequence[PathLike] | None,
    ) -> tuple[list[PathLike], list[PathLike]]:
        """Split files and label folders, from the arguments or from the standard layout."""
        if split is not None:
            splits = _as_list(split)
        elif root is None:
            splits = []  # FolderSegDataset behaviour: every image under img_dir
        elif subset == "aug":
            splits = [f"{_SPLIT_DIR}/train.txt", f"{_SPLIT_DIR}/aug.txt"]
        else:
            splits = [f"{_SPLIT_DIR}/{subset}.txt"]
        if ann_dir is not None:
            ann_dirs = _as_list(ann_dir)
            if len(ann_dirs) == 1 and len(splits) > 1:
                ann_dirs = ann_dirs * len(splits)
        elif root is not None and split is None and subset == "aug":
            ann_dirs = ["SegmentationClass", "SegmentationClassAug"]
        else:
            ann_dirs = ["SegmentationClass"] * max(1, len(splits))
            if root is None:
                raise DataError("VOCDataset.ann_dir: give either 'root' (standard layout) or 'ann_dir'")
        return splits, ann_dirs

    def _list_items(self, split: PathLike | None) -> list[tuple[Path, Path]]:
        if not self._splits:
            return super()._list_items(None)
        if not self.img_dir.is_dir():
            raise DataError(f"{type(self).__name__}.img_dir: {self.img_dir} is not a directory")
        items: list[tuple[Path, Path]] = []
        for split_file, ann_dir in zip(self._splits, self._ann_dirs, strict=True):
            if not ann_dir.is_dir():
                raise DataError(f"{type(self).__name__}.ann_dir: {ann_dir} is not a directory")
            items += self._pair(self._read_split(split_file), ann_dir, split_file)
        return items
