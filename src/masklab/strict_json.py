"""JSON that strict parsers read: NaN and infinities become ``null``.

Python's ``json`` writes bare ``NaN`` / ``Infinity``, which ``jq``, JavaScript and most
non-Python readers reject. Metrics are legitimately NaN (a class absent from the val set, an
attribute with no matched pair), so every metrics / log file masklab writes goes through
:func:`dumps`; readers get ``null`` for "no value".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (nested in dicts, lists and tuples) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """``json.dumps`` of :func:`finite_or_null` (``allow_nan=False``: nothing non-finite slips through)."""
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False)
