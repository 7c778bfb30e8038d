"""MMSegmentation's ``format_only``: one 8-bit label PNG per image for a benchmark server, no metrics.

:class:`LabelPngFormatter` takes an evaluator's place in :class:`~masklab.engine.val_loop.ValLoop`,
so the predictions are exactly those ``masklab evaluate`` scores (original resolution, the config's
``evaluate`` settings). Written values follow MMSeg's ``IoUMetric`` / ``CityscapesMetric``:

* Cityscapes datasets: the official ``labelId`` of each class (train id 0 road -> 7, 18 bicycle -> 33);
* ``reduce_zero_label``: the training label + 1 (ADE20K's official 0..150 range, 0 = "other");
* otherwise the contiguous training label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from masklab.errors import ConfigError, DataError
from masklab.structures import Batch
from masklab.structures.predictions import SemanticPrediction


def output_values(dataset: Any) -> tuple[torch.Tensor, str]:
    """(C,) int64 table training label -> written value, and how the values are described."""
    from masklab.data.datasets.cityscapes import (
        CITYSCAPES_LABEL_ID_TO_TRAIN_ID,
        CITYSCAPES_META,
        CityscapesDataset,
    )

    classes = tuple(dataset.metainfo.classes)
    if isinstance(dataset, CityscapesDataset):
        label_ids = {t: i for i, t in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items() if t != 255}
        ids = [label_ids[CITYSCAPES_META.classes.index(c)] for c in classes]
        return torch.tensor(ids, dtype=torch.int64), "Cityscapes labelIds"
    arange = torch.arange(len(classes), dtype=torch.int64)
    if getattr(dataset, "reduce_zero_label", False):
        return arange + 1, f"label + 1 (reduce_zero_label), 1..{len(classes)}"
    return arange, f"training labels 0..{len(classes) - 1}"


def output_names(dataset: Any) -> list[str]:
    """Each image's output path relative to the output folder: its path under ``img_dir`` with
    ``.png`` for its extension (subfolders mirrored, as ``masklab infer`` names them).

    Raises:
        ConfigError: the dataset does not list its images (``items`` and ``img_dir``).
        DataError: two images would be written to the same file (naming both).
    """
    items, img_dir = getattr(dataset, "items", None), getattr(dataset, "img_dir", None)
    if items is None or img_dir is None:
        raise ConfigError(
            f"format_only: {type(dataset).__name__} does not list its image files (items, img_dir); "
            "expected a FolderSegDataset (or a subclass)"
        )
    names: list[str] = []
    seen: dict[str, Path] = {}
    for image, _ in items:
        image = Path(image)
        try:
            rel = PurePosixPath(image.relative_to(img_dir).as_posix())
        except ValueError:  # a split stem leaving img_dir (``../x``): named by its file name
            rel = PurePosixPath(image.name)
        name = str(rel.with_suffix(".png"))
        first = seen.setdefault(name, image)
        if first != image:
            raise DataError(
                f"{first} and {image}: both would be written as {name}; "
                "format them in separate runs (or to separate output folders)"
            )
        names.append(name)
    return names


class LabelPngFormatter:
    """An evaluator that writes ``out_dir/<name>.png`` per prediction and computes no metrics.

    Args:
        out_dir: the folder written into (created when the first file is written).
        names: output path per dataset index (``meta.image_id``), from :func:`output_names`.
        values: (C,) training label -> written value, from :func:`output_values`.
        description: how the values are described in :meth:`summary`.
    """

    def __init__(self, out_dir: Path, names: Sequence[str], values: torch.Tensor, description: str) -> None:
        if values.numel() and int(values.max()) > 255:
            raise ConfigError(
                f"format_only: written values reach {int(values.max())}; an 8-bit PNG holds 0..255"
            )
        self.out_dir = Path(out_dir)
        self.names = list(names)
        self.values = values
        self.description = description
        self.metric_description = ""
        self.reset()

    def reset(self) -> None:
        """Forget the count of written files (files already written stay)."""
        self.written = 0

    def process(self, batch: Batch | None, predictions: list[SemanticPrediction]) -> None:
        """Write each prediction's mapped label map (atomically: no partial PNG is ever left)."""
        from masklab.inference.writers import write_label_png

        for pred in predictions:
            index = int(pred.meta.image_id)
            if not 0 <= index < len(self.names):
                raise DataError(f"{pred.meta.file_name}: image_id {index} is not an index of the dataset")
            labels = pred.label_map.to("cpu", torch.int64)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.values.numel()):
                raise DataError(
                    f"{pred.meta.file_name}: predicted labels {int(labels.min())}..{int(labels.max())} "
                    f"outside [0, {self.values.numel()})"
                )
            write_label_png(self.out_dir / self.names[index], self.values[labels])  # creates subfolders
            self.written += 1

    def compute(self) -> dict[str, float]:
        """No metrics (the count of files written, summed over ranks, is kept for :meth:`summary`)."""
        from masklab.engine.distributed import all_reduce_dict

        # all_reduce_dict puts the count on the GPU under NCCL (a CPU tensor there is an error).
        self.written = round(all_reduce_dict({"written": self.written}, op="sum")["written"])
        return {}

    def summary(self) -> str:
        """The one line printed after the run."""
        return f"wrote {self.written} label PNGs to {self.out_dir} (values: {self.description})"
