""" "Did you mean ...?" for config keys and section names: one cutoff, so every error suggests alike."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's ratio of a key to a valid one. Typos score 0.8-0.97 (chanels/channels 0.93, lrr/lr 0.8,
# trian/train 0.8, max_iter/max_iters 0.94); unrelated keys that merely share a prefix score 0.6
# (num_convs/num_classes: the FCNHead key on a PSPHead is not a misspelt class count).
KEY_CUTOFF = 0.7


def closest(word: str, candidates: Iterable[str], cutoff: float = KEY_CUTOFF) -> str | None:
    """The candidate ``word`` most likely misspells, or None when none is close enough."""
    hits = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return hits[0] if hits else None


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = KEY_CUTOFF) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    hit = closest(word, candidates, cutoff)
    return f"; did you mean {hit!r}?" if hit else ""
