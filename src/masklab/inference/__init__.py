"""Inference on images: :class:`Inferencer` and MMSeg's function forms ``init_model``,
``inference_model`` and ``show_result`` (see :mod:`masklab.inference.inferencer`)."""

from __future__ import annotations

from typing import Any

__all__ = ["Inferencer", "inference_model", "init_model", "show_result"]


def __getattr__(name: str) -> Any:  # lazy: importing masklab.inference.settings stays cheap
    if name in __all__:
        from masklab.inference import inferencer

        return getattr(inferencer, name)
    raise AttributeError(f"module 'masklab.inference' has no attribute {name!r}")
