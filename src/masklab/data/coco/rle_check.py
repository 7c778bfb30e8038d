"""Checking compressed RLE ``counts`` strings before pycocotools reads them.

pycocotools' ``rleFrString`` accepts any string: a garbage one such as ``"!!!!zz"`` becomes runs
that do not cover the image, so ``area``/``toBbox``/``iou`` return silently wrong numbers and only
``decode`` fails (``ValueError: Invalid RLE mask representation``, deep inside training). This
module decodes the strings the way ``rleFrString`` does, vectorised over a whole file with NumPy
(a results file holds ~1e5 of them), and says which are not a valid mask of their size.

The encoding (``maskApi.c``): each run length is coded in 5-bit groups, least significant first,
as ``chr(48 + group)`` with bit 0x20 set on all but the last group of a number and bit 0x10 of the
last group its sign; from the fourth number on, each is stored as the difference to the number two
places before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BAD_CHAR, _TRUNCATED, _TOO_LONG, _NEGATIVE, _WRONG_SUM = 1, 2, 3, 4, 5
# A valid difference of two uint32 runs needs at most 33 bits: 7 groups of 5 bits.
_MAX_GROUPS = 7
_CHUNK_CHARS = 1 << 18
# Value of a character: low 5 bits, and (for a number's last character) with its sign bit applied.
_LOW = np.zeros(256, dtype=np.int64)
_SIGNED = np.zeros(256, dtype=np.int64)
for _b in range(48, 112):
    _LOW[_b] = (_b - 48) & 0x1F
    _SIGNED[_b] = _LOW[_b] - (32 if (_b - 48) & 0x10 else 0)
_ALT = np.resize(np.array([1, -1], dtype=np.int64), 2 * _CHUNK_CHARS)


def check_rle_strings(
    counts: Sequence[str], sizes: Sequence[tuple[int, int]]
) -> tuple[list[str | None], np.ndarray]:
    """Validate compressed RLE strings against their ``(height, width)``.

    Args:
        counts: the ``segmentation.counts`` strings.
        sizes: the ``segmentation.size`` of each, ``(height, width)``.

    Returns:
        ``(problems, areas)``: per string ``None`` when it decodes to runs that are non-negative and
        sum to ``height * width``, else a short description of the first problem; and the number of
        foreground pixels of each (0 for invalid strings).
    """
    n = len(counts)
    if n == 0:
        return [], np.zeros(0, dtype=np.int64)
    pixels = np.fromiter((h * w for h, w in sizes), dtype=np.int64, count=n)
    text = "".join(counts)
    reason = np.zeros(n, dtype=np.int8)
    if not text.isascii():  # rare: leave the non-ASCII strings out of the decoding
        ascii_ok = np.fromiter((s.isascii() for s in counts), dtype=bool, count=n)
        reason[~ascii_ok] = _BAD_CHAR
        text = "".join(s for s, ok in zip(counts, ascii_ok.tolist(), strict=True) if ok)
        lens = np.fromiter((len(s) if s.isascii() else 0 for s in counts), dtype=np.int64, count=n)
    else:
        lens = np.fromiter(map(len, counts), dtype=np.int64, count=n)
    areas = np.zeros(n, dtype=np.int64)
    totals = np.zeros(n, dtype=np.int64)
    buf = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    stop = np.cumsum(lens)
    # Chunks of whole strings small enough for the int64 temporaries to stay in cache.
    cuts = np.unique(np.searchsorted(stop, np.arange(_CHUNK_CHARS, len(buf), _CHUNK_CHARS)))
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
        lo, hi = int(stop[a - 1]) if a else 0, int(stop[b - 1]) if b else 0
        if hi > lo:
            sl = slice(a, b)
            _decode_into(buf[lo:hi], lens[sl], pixels[sl], reason[sl], areas[sl], totals[sl])
    reason[(reason == 0) & (totals != pixels)] = _WRONG_SUM
    areas[reason != 0] = 0
    problems: list[str | None] = [None] * n
    for i in np.flatnonzero(reason).tolist():
        problems[i] = _describe(int(reason[i]), counts[i], int(totals[i]), sizes[i])
    return problems, areas


def _decode_into(
    buf: np.ndarray,
    lens: np.ndarray,
    pixels: np.ndarray,
    reason: np.ndarray,
    areas: np.ndarray,
    totals: np.ndarray,
) -> None:
    """Decode whole strings concatenated in ``buf``; fill ``reason`` (0 = fine so far), ``areas``, ``totals``.

    A results file holds ~1e7 characters, so every pass over them counts: the work is a handful of
    passes over the characters (uint8) and about fifteen over the numbers (int64).
    """
    n = len(lens)
    stop = np.cumsum(lens)  # one past the last character of each string
    nonempty = np.flatnonzero(lens)
    bad = (buf - np.uint8(48)) > 63  # wraps below '0'
    if bad.any():
        _flag(reason, np.searchsorted(stop, np.flatnonzero(bad), side="right"), _BAD_CHAR)
        buf = np.where(bad, np.uint8(48), buf)
    ends = buf < 80  # '0'..'O' end a number, 'P'..'o' continue it
    last_char = stop[nonempty] - 1
    _flag(reason, nonempty[~ends[last_char]], _TRUNCATED)  # the last number never ends
    ends[last_char] = True  # numbers never run across strings
    group_end = np.flatnonzero(ends)
    gcount = np.zeros(n, dtype=np.int64)
    gcount[nonempty] = np.add.reduceat(ends, stop[nonempty] - lens[nonempty], dtype=np.int64)
    x = _SIGNED[buf[group_end]]  # one-character numbers (almost all of them) are done here
    cont = np.flatnonzero(~ends)
    if len(cont):
        _add_continuations(x, buf, cont, group_end, gcount, reason)
    # Number m of a string: from m = 3 on it is the difference to run m - 2, so each run (m >= 1) is
    # the sum of the same-parity numbers 1..m of its string: with signs a = (-1)^index and running
    # sums S of y, T of a * y restarted at each string, run = (S + a * T) / 2.
    has = np.flatnonzero(gcount)
    heads = (np.cumsum(gcount) - gcount)[has]  # each string's first number: run 0, stored as is
    head_runs = x[heads]
    x[heads] = 0
    alt = _ALT[: len(x)] if len(x) <= len(_ALT) else 1 - 2 * (np.arange(len(x)) & 1)
    ya = x * alt
    for seq in (x, ya):  # a head (0 here) cancels the previous string's sum: the running sum restarts
        if len(heads) > 1:
            seq[heads[1:]] = -np.add.reduceat(seq, heads)[:-1]
        np.cumsum(seq, out=seq)
    runs = x
    np.multiply(ya, alt, out=ya)
    runs += ya
    runs >>= 1
    runs[heads] = head_runs
    if len(runs) and runs.min() < 0:  # rare: find the strings
        _flag(reason, has[np.minimum.reduceat(runs, heads) < 0], _NEGATIVE)
    totals[has] = np.add.reduceat(runs, heads)
    # Odd runs: (-1)^m = a_index * a_head, so their sum is (total - a_head * sum(a * run)) / 2.
    np.multiply(runs, alt, out=ya)
    areas[has] = (totals[has] - alt[heads] * np.add.reduceat(ya, heads)) >> 1


def _add_continuations(
    x: np.ndarray,
    buf: np.ndarray,
    cont: np.ndarray,
    group_end: np.ndarray,
    gcount: np.ndarray,
    reason: np.ndarray,
) -> None:
    """Complete the numbers longer than one character (their continuation characters are ``cont``).

    A number of L characters is ``sum(low_k << 5k, k < L-1) + signed_last << 5(L-1)``.
    """
    number = np.searchsorted(group_end, cont)  # the number each continuation character belongs to
    multi, first_cont, extra = np.unique(number, return_index=True, return_counts=True)
    long = multi[extra >= _MAX_GROUPS]
    if len(long):
        first = np.cumsum(gcount) - gcount
        _flag(reason, np.searchsorted(first, long, side="right") - 1, _TOO_LONG)
    extra = np.minimum(extra, _MAX_GROUPS)  # keeps the shifts in range; those strings are flagged
    k = np.minimum(
        extra[np.repeat(np.arange(len(multi)), np.diff(np.append(first_cont, len(cont))))]
        - (group_end[number] - cont),
        _MAX_GROUPS,
    )
    low = _LOW[buf[cont]] << (5 * np.maximum(k, 0))
    x[multi] = (x[multi] << (5 * extra)) + np.add.reduceat(low, first_cont)


def _flag(reason: np.ndarray, strings: np.ndarray, code: int) -> None:
    """Record ``code`` for ``strings`` that have no earlier problem."""
    if len(strings):
        idx = np.unique(strings)
        reason[idx] = np.where(reason[idx] == 0, code, reason[idx])


def _describe(code: int, counts: str, total: int, size: tuple[int, int]) -> str:
    h, w = size
    if code == _BAD_CHAR:
        bad = next((ch for ch in counts if not 48 <= ord(ch) <= 111), "?")
        return f"character {bad!r} is not an RLE character ('0'..'o')"
    if code == _TRUNCATED:
        return "the string ends inside a number (truncated)"
    if code == _TOO_LONG:
        return "a number is longer than 7 characters (not an RLE string)"
    if code == _NEGATIVE:
        return f"it decodes to a run outside [0, {h * w}] pixels"
    return f"its runs cover {total} pixels; expected {h * w} (size [{h}, {w}])"


def precheck_rle_counts(entries: Sequence[object]) -> dict[int, tuple[str | None, int]]:
    """Check, in one batch, every compressed RLE string among raw annotation/result entries.

    Only entries whose ``segmentation`` is ``{"size": [h, w], "counts": str}`` with positive whole
    numbers as size are looked at (the field-by-field checks refuse any other size).

    Returns:
        entry index -> ``(problem or None, foreground pixels)``.
    """
    index: list[int] = []
    counts: list[str] = []
    sizes: list[tuple[int, int]] = []
    for i, raw in enumerate(entries):
        segm = raw.get("segmentation") if type(raw) is dict else None
        if type(segm) is not dict or type(segm.get("counts")) is not str:
            continue
        size = segm.get("size")
        # Any size equal to an image's [h, w] (2.0 == 2 too) must be checked here.
        if type(size) is list and len(size) == 2 and all(type(v) in (int, float) for v in size):
            h, w = size
            if h == int(h) > 0 and w == int(w) > 0:
                index.append(i)
                counts.append(segm["counts"])
                sizes.append((int(h), int(w)))
    problems, areas = check_rle_strings(counts, sizes)
    return dict(zip(index, zip(problems, areas.tolist(), strict=True), strict=True))
