"""Train and val must describe their labels the same way, or the metrics silently lie.

The model's label ``i`` is the train set's class ``i``. A val file with one more category shifts
every later label onto another category id (the metrics score "dog" as "cat"); one category less
fails only at the first validation. :func:`check_same_meta` compares the two
:class:`~masklab.data.meta.DatasetMeta` up front and names the first difference;
:func:`check_checkpoint_meta` does the same for a checkpoint and the data it is evaluated on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from masklab.data.meta import DatasetMeta, short_repr
from masklab.errors import DataError


def check_same_meta(
    train: Any, val: Any, source: str = "", keys: tuple[str, str] = ("dataset.train", "dataset.val")
) -> None:
    """Refuse train/val datasets whose metadata disagree.

    Compared, in this order: class names per label, source category ids per label (COCO), attribute
    names and their value names, ``ignore_index``. Datasets without ``metainfo`` are not compared.

    Args:
        train: the train dataset (its ``metainfo``; ``meta_source`` names where it came from).
        val: the val dataset.
        source: the config file, named first in the message.
        keys: the config keys of the two datasets.

    Raises:
        DataError: one line naming both keys and files and the first difference.
    """
    a, b = getattr(train, "metainfo", None), getattr(val, "metainfo", None)
    if not isinstance(a, DatasetMeta) or not isinstance(b, DatasetMeta):
        return
    diff = meta_difference(a, b, names=(keys[0].rsplit(".", 1)[-1], keys[1].rsplit(".", 1)[-1]))
    if diff is None:
        return
    prefix = f"{source}: " if source else ""
    raise DataError(
        f"{prefix}{keys[0]} ({_where(train)}) and {keys[1]} ({_where(val)}) disagree on their labels: "
        f"{diff}; train and val must share classes, category ids and attributes (the model's label i "
        "is the train set's class i)"
    )


def check_checkpoint_meta(
    saved: Any,
    dataset: Any,
    checkpoint: str,
    key: str = "dataset.val",
    *,
    attributes: bool = True,
) -> None:
    """Refuse evaluating a checkpoint on a dataset whose labels mean other classes.

    The model's output ``i`` is the class ``i`` of the data it was trained on, which training
    stores in the checkpoint (``dataset_meta``); the metrics name the dataset's class ``i``. Two
    class lists of the same length in another order build the same model and load the same weights,
    so nothing else would notice.

    Args:
        saved: the checkpoint's ``dataset_meta`` entry (plain data), or None for a checkpoint
            without one (nothing to compare).
        dataset: the dataset to evaluate on (its ``metainfo``).
        checkpoint: the checkpoint file, named first in the message.
        key: the config key of ``dataset``.
        attributes: compare attributes too (the model predicts them); a semantic model does not.

    Raises:
        DataError: one line naming the checkpoint's classes, the dataset's and the first difference.
    """
    current = getattr(dataset, "metainfo", None)
    if not saved or not isinstance(current, DatasetMeta):
        return
    stored = DatasetMeta.from_json(saved, where=f"{checkpoint}: dataset_meta")
    if not attributes:
        stored, current = replace(stored, attributes=()), replace(current, attributes=())
    diff = meta_difference(stored, current, names=("the checkpoint", key))
    if diff is None:
        return
    raise DataError(
        f"{checkpoint}: the checkpoint was trained on classes {short_repr(list(stored.classes), 200)} but "
        f"{key} ({_where(dataset)}) has {short_repr(list(current.classes), 200)}: {diff}; evaluate on data "
        "labelled as in training (the model's label i is the checkpoint's class i)"
    )


def meta_difference(a: DatasetMeta, b: DatasetMeta, names: tuple[str, str] = ("a", "b")) -> str | None:
    """The first difference between two metadata, as a phrase, or None when they agree."""
    na, nb = names
    for i in range(max(a.num_classes, b.num_classes)):
        ca, cb = _label(a, i), _label(b, i)
        if ca != cb:
            return (
                f"label {i} is {ca} in {na} ({a.num_classes} classes) but {cb} in {nb} "
                f"({b.num_classes} classes)"
            )
    if (a.category_ids is None) != (b.category_ids is None):
        return f"category ids: {na} has {a.category_ids}, {nb} has {b.category_ids}"
    if a.attribute_names != b.attribute_names:
        return f"attributes: {na} has {list(a.attribute_names)}, {nb} has {list(b.attribute_names)}"
    for x, y in zip(a.attributes, b.attributes, strict=True):
        if x.values != y.values:
            return f"attribute {x.name!r} values: {na} has {list(x.values)}, {nb} has {list(y.values)}"
    if a.ignore_index != b.ignore_index:
        return f"ignore_index: {na} has {a.ignore_index}, {nb} has {b.ignore_index}"
    return None


def _label(meta: DatasetMeta, i: int) -> str:
    if i >= meta.num_classes:
        return "missing"
    if meta.category_ids is None:
        return repr(meta.classes[i])
    return f"{meta.classes[i]!r} (category id {meta.category_ids[i]})"


def _where(dataset: Any) -> str:
    return str(getattr(dataset, "meta_source", None) or type(dataset).__name__)
