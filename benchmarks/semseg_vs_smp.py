"""masklab vs segmentation_models_pytorch: FPN and DeepLabV3+ on ResNet-18, batch 2 at 512x512.

Run: ``.venv/bin/python benchmarks/semseg_vs_smp.py [--runs 5] [--warmup 2]``

Both sides run in this one process, interleaved run by run (masklab, smp, masklab, ...), so load
from other jobs hits both alike; the median of ``--runs`` timed runs is reported, with the ratio
masklab / smp (target <= 1.0). Train step = zero_grad + forward + CE (ignore 255) + backward, train
mode; forward = eval mode under inference_mode. 19 classes, random init. Like the reference
measurement, glibc is told to keep freed memory (MALLOC_MMAP_MAX_=0) for both sides: the script
re-executes itself with it unless ``--default-malloc``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}


def masklab_models(classes: int) -> dict[str, object]:
    from masklab.models.backbones import TimmBackbone
    from masklab.models.necks import FPN
    from masklab.models.semantic import DepthwiseSeparableASPPHead, EncoderDecoder, FPNHead

    fpn = EncoderDecoder(
        backbone=TimmBackbone("resnet18", out_indices=(1, 2, 3, 4)),
        neck=lambda in_channels: FPN(in_channels=in_channels, out_channels=256),
        decode_head=lambda in_channels, num_classes: FPNHead(
            in_channels=in_channels, channels=128, num_classes=num_classes, dropout_ratio=0.0
        ),
        num_classes=classes,
    )
    dlv3p = EncoderDecoder(
        backbone=TimmBackbone("resnet18", out_indices=(1, 2, 3, 4), output_stride=16),
        decode_head=lambda in_channels, num_classes: DepthwiseSeparableASPPHead(
            in_channels=in_channels,
            channels=256,
            num_classes=num_classes,
            dilations=(1, 12, 24, 36),
            c1_channels=48,
            dropout_ratio=0.0,
        ),
        num_classes=classes,
    )
    return {"FPN": fpn, "DeepLabV3+": dlv3p}


def smp_models(classes: int) -> dict[str, object]:
    import segmentation_models_pytorch as smp

    return {
        "FPN": smp.FPN("resnet18", encoder_weights=None, classes=classes),
        "DeepLabV3+": smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=classes),
    }


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args()
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

    import torch
    import torch.nn.functional as F

    from masklab.structures.batch import Batch
    from masklab.structures.sample import SampleMeta

    torch.manual_seed(0)
    images = torch.randn(2, 3, args.size, args.size)
    label = torch.randint(0, 19, (2, args.size, args.size))
    label[:, :16] = 255
    batch = Batch(images=images, metas=[SampleMeta(), SampleMeta()], semantic=label)
    ours, theirs = masklab_models(19), smp_models(19)

    def ml_train(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            losses = model(batch, mode="loss")
            sum(v for k, v in losses.items() if k.startswith("loss")).backward()

        return step

    def smp_train(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), label, ignore_index=255).backward()

        return step

    def forward(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                fn(images)

        return run

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {os.getloadavg()}")
    print(
        f"batch 2 x 3 x {args.size} x {args.size}, median of {args.runs} interleaved runs after {args.warmup} warm-ups"
    )
    print(f"malloc tuning: {'off' if args.default_malloc else 'MALLOC_MMAP_MAX_=0 (both sides)'}")
    print(f"{'model':<12}{'mode':<9}{'masklab s':>11}{'smp s':>9}{'ratio':>8}")
    for name in ours:
        ml, sm = ours[name], theirs[name]
        for mode in ("train", "forward"):
            ml.train(mode == "train")
            sm.train(mode == "train")
            a = ml_train(ml) if mode == "train" else forward(ml.encode_decode)
            b = smp_train(sm) if mode == "train" else forward(sm)
            for _ in range(args.warmup):
                a(), b()
            ta, tb = [], []
            for _ in range(args.runs):
                ta.append(timed(a))
                tb.append(timed(b))
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{name:<12}{mode:<9}{ma:>11.3f}{mb:>9.3f}{ma / mb:>8.2f}", flush=True)
    print(f"load avg at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
