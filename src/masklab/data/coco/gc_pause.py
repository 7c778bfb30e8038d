"""Pause Python's cyclic garbage collector while big acyclic structures are built.

Parsing a results file allocates ~1e6 dicts, lists and records. Each allocation burst triggers
collections that rescan every live object, which costs about a third of the parse; these
structures hold no reference cycles, so nothing is lost by collecting only afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (re-enabled after, if it was on; nests)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
