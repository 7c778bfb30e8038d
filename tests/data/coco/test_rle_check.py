"""check_rle_strings: the vectorised RLE string check agrees with pycocotools' decoder."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from masklab.data.coco import rle_check
from masklab.data.coco.rle_check import check_rle_strings, precheck_rle_counts


def _reference(counts: str, h: int, w: int) -> int | None:
    """maskApi.c ``rleFrString`` in plain Python: the foreground area, or None if not a valid mask."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts) or not 0 <= ord(counts[p]) - 48 <= 63:
                return None
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if k > 7:
            return None
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        return None
    return sum(runs[1::2])


def _masks(seed: int, n: int) -> tuple[list[str], list[tuple[int, int]], list[int]]:
    rng = np.random.default_rng(seed)
    counts, sizes, areas = [], [], []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        yy, xx = np.mgrid[:h, :w]
        mask = (rng.random((h, w)) < 0.1 * (i % 3)).astype(np.uint8)  # noise, or nothing
        for _ in range(int(rng.integers(0, 3))):  # blobs give multi-character numbers
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 40)
            mask |= ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        if i % 11 == 0:
            mask[:] = 1
        counts.append(mask_utils.encode(np.asfortranarray(mask))["counts"].decode())
        sizes.append((h, w))
        areas.append(int(mask.sum()))
    return counts, sizes, areas


@pytest.mark.parametrize("chunk", [64, 1 << 18])
def test_valid_strings_pass_with_pycocotools_areas(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(rle_check, "_CHUNK_CHARS", chunk)  # many chunks, or one
    counts, sizes, areas = _masks(0, 120)
    problems, got = check_rle_strings(counts, sizes)
    assert problems == [None] * len(counts)
    assert got.tolist() == areas


def test_corrupted_strings_agree_with_the_reference_decoder() -> None:
    counts, sizes, _ = _masks(1, 60)
    rng = np.random.default_rng(2)
    mutated, msizes = [], []
    for _ in range(1500):
        j = int(rng.integers(len(counts)))
        chars = list(counts[j])
        op = int(rng.integers(4))
        if op == 0 and chars:
            chars[int(rng.integers(len(chars)))] = chr(int(rng.integers(40, 120)))
        elif op == 1 and chars:
            del chars[int(rng.integers(len(chars))) :]
        elif op == 2:
            chars.insert(int(rng.integers(len(chars) + 1)), chr(int(rng.integers(48, 112))))
        elif chars:
            del chars[int(rng.integers(len(chars)))]
        mutated.append("".join(chars))
        msizes.append(sizes[j])
    mutated += ["", "P", "ooooooooo0", "é0", "!!!!zz"]
    msizes += [(2, 3)] * 5
    problems, areas = check_rle_strings(mutated, msizes)
    for text, (h, w), problem, area in zip(mutated, msizes, problems, areas.tolist(), strict=True):
        expected = _reference(text, h, w)
        assert (problem is None) == (expected is not None), (text, problem)
        assert area == (expected or 0)
    assert sum(p is not None for p in problems) > 500  # the mutations do break most strings


@pytest.mark.parametrize(
    ("counts", "needle"),
    [
        ("!!!!zz", "character '!' is not an RLE character"),
        ("0P", "ends inside a number"),
        ("oooooooo0", "longer than 7 characters"),
        ("6O", "outside [0, 6]"),  # 6 then -1: a negative run
        ("", "cover 0 pixels; expected 6"),
        ("06", "cover 6 pixels"),  # 0 + 6 = 6: valid
    ],
)
def test_problem_descriptions(counts: str, needle: str) -> None:
    (problem,), _ = check_rle_strings([counts], [(2, 3)])
    if counts == "06":
        assert problem is None
    else:
        assert problem is not None and needle in problem


def test_precheck_picks_string_rles_with_whole_sizes() -> None:
    entries = [
        {"segmentation": {"size": [2, 3], "counts": "!!"}},
        {"segmentation": {"size": [2.0, 3.0], "counts": "06"}},  # equal to [2, 3]: must be checked
        {"segmentation": {"size": [2, 3], "counts": [0, 6]}},  # list counts: checked by the loader
        {"segmentation": [[0, 0, 1, 0, 1, 1]]},
        "not an entry",
    ]
    checks = precheck_rle_counts(entries)
    assert set(checks) == {0, 1}
    assert checks[0][0] is not None and checks[1] == (None, 6)  # 0 background, 6 foreground pixels
