"""COCO instance segmentation dataset (with per-instance attributes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from masklab.config.registries import DATASETS
from masklab.data.coco.images import check_image_files, read_coco_image
from masklab.data.coco.load import OnBad, load_coco
from masklab.data.coco.records import CocoAnnotation, CocoFile, CocoImage
from masklab.data.coco.rle import ann_to_rle
from masklab.data.meta import DatasetMeta
from masklab.structures import Instances, Sample, SampleMeta

Transform = Callable[[Sample], Sample]


@DATASETS.register()
class CocoInstanceDataset(torch.utils.data.Dataset):
    """Images and instances of a COCO instances file.

    Category ids are mapped to contiguous labels in ascending id order (``metainfo.category_ids[label]``
    gives the id back). Crowd regions become instances with ``ignore=True``. Annotations without
    ``segmentation`` (box-only files, e.g. mask auto-labeling input) get their filled box as mask.
    Attribute values missing from an annotation are ``-1``. Every image entry the dataset uses must
    name an existing file (checked when the dataset is built). See ``docs/datasets.md``.

    Args:
        ann_file: COCO instances JSON (top-level ``attributes: [{name, values}]`` optional).
        img_dir: directory that ``file_name`` is relative to.
        pipeline: transforms applied to each :class:`Sample`.
        attributes_required: every annotation must label every attribute.
        on_bad: ``"error"`` or ``"skip"`` for malformed annotations (see :func:`load_coco`).
        filter_empty: drop images without any non-crowd annotation (usual for training).
        root: optional folder that relative ``ann_file`` and ``img_dir`` are resolved against
            (the config's ``dataset.root``).
    """

    def __init__(
        self,
        ann_file: str,
        img_dir: str,
        *,
        pipeline: Sequence[Transform] = (),
        attributes_required: bool = False,
        on_bad: OnBad = "error",
        filter_empty: bool = False,
        root: str | None = None,
    ) -> None:
        if root is not None:
            ann_file, img_dir = str(Path(root) / ann_file), str(Path(root) / img_dir)
        self.coco: CocoFile = load_coco(ann_file, attributes_required=attributes_required, on_bad=on_bad)
        self.img_dir = Path(img_dir)
        self.pipeline = list(pipeline)
        cats = self.coco.category_by_id()
        ids = self.coco.category_ids
        self.metainfo = DatasetMeta(
            classes=tuple(cats[c].name for c in ids), attributes=self.coco.attributes, category_ids=ids
        )
        self._label_of = {cid: i for i, cid in enumerate(ids)}
        by_image = self.coco.annotations_by_image()
        images = self.coco.images
        if filter_empty:
            images = tuple(im for im in images if any(not a.iscrowd for a in by_image[im.id]))
        self.images: tuple[CocoImage, ...] = images
        self._anns = by_image
        check_image_files(self.img_dir, self.images, self.coco.path)
        self.meta_source = f"ann_file {self.coco.path}"  # where the metadata comes from, for messages

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        pixels = read_coco_image(self.img_dir, image, self.coco.path)
        meta = SampleMeta(
            image_id=image.id,
            file_name=str(self.img_dir / image.file_name),
            ori_shape=(image.height, image.width),
            img_shape=(image.height, image.width),
        )
        sample = Sample(image=pixels, meta=meta, instances=self.instances_of(image, self._anns[image.id]))
        for transform in self.pipeline:
            sample = transform(sample)
        return sample

    def instances_of(self, image: CocoImage, anns: Sequence[CocoAnnotation]) -> Instances:
        """The :class:`Instances` of ``anns`` on ``image`` (masks decoded at the image's size)."""
        names = self.metainfo.attribute_names
        if not anns:
            return Instances.empty(image.height, image.width, names)
        rles = [ann_to_rle(a, image) for a in anns]
        masks = mask_utils.decode(rles)  # (H, W, N) uint8, Fortran order
        boxes = np.array([[a.bbox[0], a.bbox[1], a.bbox[0] + a.bbox[2], a.bbox[1] + a.bbox[3]] for a in anns])
        return Instances(
            masks=torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).bool(),
            boxes=torch.as_tensor(boxes, dtype=torch.float32),
            labels=torch.tensor([self._label_of[a.category_id] for a in anns], dtype=torch.int64),
            attributes={
                n: torch.tensor([a.attributes.get(n, -1) for a in anns], dtype=torch.int64) for n in names
            },
            ignore=torch.tensor([a.iscrowd for a in anns], dtype=torch.bool),
            ids=torch.tensor([a.id for a in anns], dtype=torch.int64),
        )
