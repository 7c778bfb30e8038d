"""torch's "Expected more than 1 value per channel" as a one-line error naming what caused it.

BatchNorm in training refuses a single value per channel (one image per process reaching a 1x1
pooled map: ASPP's image pool, PSP's 1x1 bin) and GroupNorm refuses it always (a group of one
channel at 1x1: images smaller than the network's stride). Both are user settings, not bugs, and
deserve a :class:`~masklab.errors.ConfigError` rather than a traceback from inside the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from masklab.errors import ConfigError


@contextlib.contextmanager
def single_value_norm_guard(images: torch.Tensor, stage: str) -> Iterator[None]:
    """Re-raise the norm layers' single-value ``ValueError`` as a ConfigError for ``stage``
    ("train" or "evaluation") that names the batch and the (padded) image size."""
    try:
        yield
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            raise
        n, _, h, w = images.shape
        raise ConfigError(
            f"{stage}: a normalisation layer saw a single value per channel "
            f"({str(exc).split('got ')[-1]}) with {n} image(s) of {h}x{w} per process: use images "
            "(or crops) at least the backbone's output stride x 2 on a side, a larger batch_size "
            "(BatchNorm needs >= 2 per process), or a norm with more than one channel per group"
        ) from exc
