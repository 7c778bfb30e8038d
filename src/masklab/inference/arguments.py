"""The Inferencer's user-given arguments, checked where they come in: ``classes``, ``palette``,
``opacity``. Each mistake is one :class:`~masklab.errors.ConfigError` line naming the argument,
the value and what was expected, instead of a numpy error from inside an overlay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from masklab.data.meta import DatasetMeta, check_palette, short_repr
from masklab.errors import ConfigError


def check_opacity(value: Any, name: str = "opacity") -> float:
    """``value`` as a float in [0, 1] (0: the image alone, 1: the colours alone)."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = math.nan
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{name}: {value!r}; expected a value in [0, 1]")
    return alpha


def check_classes(classes: Any) -> tuple[str, ...]:
    """A non-empty list of class names (strings)."""
    if (
        isinstance(classes, (str, bytes))
        or not isinstance(classes, (Sequence, np.ndarray))
        or len(classes) == 0
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ConfigError(f"classes: {short_repr(classes)}; expected a list of class names (strings)")
    return tuple(classes)


def custom_meta(
    meta: DatasetMeta, classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None
) -> DatasetMeta:
    """``meta`` with the user's class names and colours (checked); a palette given alone recolours
    the known classes, class names given alone get the default palette."""
    if classes is None and palette is None:
        return meta
    names = check_classes(classes) if classes is not None else meta.classes
    colours = (
        check_palette(palette, len(names))
        if palette is not None
        else (meta.palette if classes is None else None)
    )
    same_count = len(names) == len(meta.classes)
    return DatasetMeta(
        classes=names,
        palette=colours,
        attributes=meta.attributes,
        ignore_index=meta.ignore_index,
        # Source category ids belong to the classes they came with; another count has none.
        category_ids=meta.category_ids if same_count else None,
    )
