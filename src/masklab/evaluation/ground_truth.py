"""Where semantic evaluators find original-resolution ground truth (shared by IoU and confusion)."""

from __future__ import annotations

import torch

from masklab.errors import DataError
from masklab.structures import Batch, SampleMeta


def semantic_ground_truth(
    meta: SampleMeta, batch: Batch | None, index: int, user: str = "the evaluator"
) -> torch.Tensor:
    """The original-resolution ground truth of a prediction, in training label space.

    Read from ``meta.extra["seg_map_path"]`` through the dataset's ``reduce_zero_label``,
    ``label_map`` and ``ignore_index`` (so class subsets and raw-id datasets count right), else
    ``meta.extra["gt_semantic"]`` (already in label space), else the batch's map when the image
    was not resized.
    """
    path = meta.extra.get("seg_map_path")
    if path:
        from masklab.data.datasets.semantic import label_lut
        from masklab.data.io import read_label

        lut = label_lut(
            bool(meta.extra.get("reduce_zero_label", False)),
            meta.extra.get("label_map") or None,
            int(meta.extra.get("ignore_index", 255)),
        )
        return lut[read_label(str(path)).clamp(0, 255)]
    gt = meta.extra.get("gt_semantic")
    if isinstance(gt, torch.Tensor):
        return gt
    if batch is not None and batch.semantic is not None and tuple(meta.img_shape) == tuple(meta.ori_shape):
        h, w = meta.img_shape
        return batch.semantic[index, :h, :w]
    raise DataError(
        f"{meta.file_name or f'image {meta.image_id}'}: no ground truth for {user}; the dataset must set "
        "meta.extra['seg_map_path'] (or 'gt_semantic') when the test pipeline resizes images"
    )
