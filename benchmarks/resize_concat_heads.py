"""The heads that read a ``resize_concat`` input level by level (``ResizedLevels``) against the same
heads fed the built concatenation (MMSeg's formula), forward + backward, side by side in one process.

Shapes are the synthetic configs' (MiT-B0 levels of a batch of 8 128 px crops: 32/64/160/256 channels
at 32/16/8/4 px, channels-last as the encoder gives them). Runs alternate between the two paths, and
the median of each is printed with their ratio (levels / concat; below 1 is faster).

    python benchmarks/resize_concat_heads.py [--threads 1] [--repeats 7] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from masklab.models.semantic import ASPPHead, FCNHead, PSPHead
from masklab.models.semantic.decode_head import DecodeHead

CHANNELS = [32, 64, 160, 256]
COMMON = {
    "in_channels": CHANNELS,
    "num_classes": 7,
    "in_index": [0, 1, 2, 3],
    "input_transform": "resize_concat",
    "dropout_ratio": 0.0,
}
HEADS: dict[str, Callable[[], DecodeHead]] = {
    "DeepLabV3 ASPP, 32 ch, dilations 1/6/12/18": lambda: ASPPHead(
        channels=32, dilations=(1, 6, 12, 18), **COMMON
    ),
    "PSPNet, 64 ch, 1x1 bottleneck": lambda: PSPHead(channels=64, bottleneck_kernel_size=1, **COMMON),
    "FCN, 64 ch, one 1x1 conv": lambda: FCNHead(
        channels=64, num_convs=1, kernel_size=1, concat_input=False, **COMMON
    ),
}


def _time(head: DecodeHead, feats: list[torch.Tensor], levels: bool, steps: int) -> float:
    if not levels:  # an instance attribute shadows the method: the head builds the concatenation
        head.resized_levels = lambda features: None  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        for _ in range(steps):
            head(feats).sum().backward()
        return (time.perf_counter() - start) / steps
    finally:
        head.__dict__.pop("resized_levels", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feats = [
        torch.randn(8, c, 32 >> i, 32 >> i).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        for i, c in enumerate(CHANNELS)
    ]
    print(f"forward + backward per call, {args.threads} thread(s), median of {args.repeats} x {args.steps}")
    for name, build in HEADS.items():
        head = build().train()
        times: dict[bool, list[float]] = {True: [], False: []}
        for levels in (True, False):
            _time(head, feats, levels, 2)  # warm-up
        for _ in range(args.repeats):
            for levels in (True, False):
                times[levels].append(_time(head, feats, levels, args.steps))
        fast, slow = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name}: levels {fast * 1e3:.1f} ms, concat {slow * 1e3:.1f} ms, ratio {fast / slow:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
