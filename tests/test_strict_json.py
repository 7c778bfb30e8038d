"""Metrics and logs are strict JSON: NaN and infinities are written as null."""

from __future__ import annotations

import json

import pytest

from masklab.strict_json import dumps, finite_or_null


def test_non_finite_values_become_null_at_any_depth() -> None:
    value = {"mIoU": float("nan"), "per_class": [0.5, float("inf"), (float("-inf"), 1)], "n": 3, "ok": True}
    assert finite_or_null(value) == {"mIoU": None, "per_class": [0.5, None, [None, 1]], "n": 3, "ok": True}
    text = dumps(value)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["mIoU"] is None


def test_dumps_refuses_what_it_cannot_make_finite() -> None:
    import numpy as np

    with pytest.raises((ValueError, TypeError)):  # a numpy NaN is not a Python float: never written bare
        dumps({"x": np.float32("nan")})
