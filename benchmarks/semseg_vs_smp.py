"""masklab vs segmentation_models_pytorch: FPN and DeepLabV3+ on ResNet-18, batch 2 at 512x512.

Run: ``.venv/bin/python benchmarks/semseg_vs_smp.py [--runs 5] [--warmup 2] [--variants matched default]
[--channels-last none|masklab|both]``

``--channels-last masklab`` runs masklab's side in NHWC (weights and images), which is what a masklab
config with ``runtime.channels_last: true`` does; smp stays NCHW as a user gets it. ``both`` converts
smp by hand too, so the ratio again isolates the implementation.

Two masklab variants face the same smp models. ``matched`` builds masklab's components with smp's
layer layout (FPN neck without output convs, GroupNorm FPN head, DeepLabV3+ ``layout="smp"``); the
script checks that parameters and forward FLOPs equal smp's, so its ratio is implementation
efficiency alone. ``default`` builds the MMSeg-faithful layouts (3x3 FPN output convs, 3x3 ASPP
fusion, two separable decoder convs), so its ratio mixes more FLOPs with implementation; the
FLOPs ratio is printed next to it.

Both sides run in this one process, interleaved run by run (masklab, smp, masklab, ...), so load
from other jobs hits both alike; the median of ``--runs`` timed runs is reported, with the ratio
masklab / smp (target <= 1.0). Train step = zero_grad + forward + CE (ignore 255) at full resolution
+ backward, train mode (masklab's ``mode="loss"`` also computes its ``acc_seg`` accuracy; smp's step is
``F.cross_entropy`` on its x4-upsampled output); forward = eval mode under inference_mode, logits
at input size. 19 classes, random init, dropout off on both sides. Like the reference
measurement, glibc is told to keep freed memory (MALLOC_MMAP_MAX_=0) for both sides: the script
re-executes itself with it unless ``--default-malloc``. On a shared, oversubscribed machine use
``--threads 1``: with two OpenMP threads a descheduled thread stalls its partner at every barrier,
and single ops (e.g. a dilated depthwise conv's backward) then take seconds at random, on either side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
VARIANTS = {
    "matched": "smp's layer layout (same parameters and FLOPs, checked): implementation efficiency",
    "default": "MMSeg-faithful defaults (heavier layouts): what a masklab config costs",
}


def masklab_models(classes: int, matched: bool) -> dict[str, object]:
    """masklab's FPN and DeepLabV3+; ``matched`` = smp's layer layout, else the MMSeg-faithful defaults."""
    from masklab.models.backbones import TimmBackbone
    from masklab.models.necks import FPN
    from masklab.models.semantic import DepthwiseSeparableASPPHead, EncoderDecoder, FPNHead

    # smp's FPN: no 3x3 output convs in the pyramid, GroupNorm(32) in the segmentation blocks and
    # align_corners=True bilinear upsampling (its blocks and its final x4 upsample).
    fpn = EncoderDecoder(
        backbone=TimmBackbone("resnet18", out_indices=(1, 2, 3, 4)),
        neck=lambda in_channels: FPN(in_channels=in_channels, out_channels=256, output_convs=not matched),
        decode_head=lambda in_channels, num_classes: FPNHead(
            in_channels=in_channels,
            channels=128,
            num_classes=num_classes,
            dropout_ratio=0.0,
            norm="gn" if matched else "bn",
            align_corners=matched,
        ),
        num_classes=classes,
        align_corners=matched,
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
            layout="smp" if matched else "mmseg",
            align_corners=matched,
        ),
        num_classes=classes,
        align_corners=matched,
    )
    return {"FPN": fpn, "DeepLabV3+": dlv3p}


def smp_models(classes: int) -> dict[str, object]:
    """smp's defaults except dropout, which is off on both sides (no parameters, no FLOPs; smp puts
    DeepLabV3+'s after the ASPP projection where masklab has none)."""
    import segmentation_models_pytorch as smp

    return {
        "FPN": smp.FPN("resnet18", encoder_weights=None, classes=classes, decoder_dropout=0.0),
        "DeepLabV3+": smp.DeepLabV3Plus(
            "resnet18", encoder_weights=None, classes=classes, decoder_aspp_dropout=0.0
        ),
    }


def num_params(model: object) -> int:
    return sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]


def forward_flops(fn: Callable[[], object]) -> int:
    """Conv/matmul FLOPs of one eval forward, as ``torch.utils.flop_counter`` counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_architecture(
    ours: dict[str, object], theirs: dict[str, object], images: object, matched: bool
) -> None:
    """Print parameters and forward FLOPs of both sides; the matched variant must equal smp in both."""
    print(
        f"{'model':<12}{'masklab params':>16}{'smp params':>12}{'masklab GFLOPs':>16}{'smp GFLOPs':>12}{'FLOPs ratio':>13}"
    )
    for name in ours:
        ml, sm = ours[name], theirs[name]
        ml.eval(), sm.eval()  # type: ignore[attr-defined]
        pa, pb = num_params(ml), num_params(sm)
        fa = forward_flops(lambda: ml.encode_decode(images))  # type: ignore[attr-defined]  # noqa: B023
        fb = forward_flops(lambda: sm(images))  # type: ignore[operator]  # noqa: B023
        print(f"{name:<12}{pa:>16,}{pb:>12,}{fa / 1e9:>16.2f}{fb / 1e9:>12.2f}{fa / fb:>13.2f}")
        if matched and (pa, fa) != (pb, fb):
            raise SystemExit(f"{name}: the smp-matched masklab model differs from smp in parameters or FLOPs")


def time_pairs(
    ours: dict[str, object],
    theirs: dict[str, object],
    batch: object,
    args: argparse.Namespace,
    smp_images: object = None,
) -> None:
    """Interleaved medians of train step and forward, masklab vs smp (``smp_images``: smp's input
    when it differs from masklab's, e.g. in another memory format)."""
    import torch
    import torch.nn.functional as F

    ml_images, label = batch.images, batch.semantic  # type: ignore[attr-defined]
    images = ml_images if smp_images is None else smp_images

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

    def forward_on(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                fn(x)

        return run

    print(f"{'model':<12}{'mode':<9}{'masklab s':>11}{'smp s':>9}{'ratio':>8}")
    for name in ours:
        ml, sm = ours[name], theirs[name]
        for mode in args.modes:
            ml.train(mode == "train")  # type: ignore[attr-defined]
            sm.train(mode == "train")  # type: ignore[attr-defined]
            a = ml_train(ml) if mode == "train" else forward_on(ml.encode_decode, ml_images)  # type: ignore[attr-defined]
            b = smp_train(sm) if mode == "train" else forward_on(sm, images)  # type: ignore[arg-type]
            for _ in range(args.warmup):
                a(), b()
            ta, tb = [], []
            for _ in range(args.runs):
                ta.append(timed(a))
                tb.append(timed(b))
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{name:<12}{mode:<9}{ma:>11.3f}{mb:>9.3f}{ma / mb:>8.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", choices=("train", "forward"), default=["train", "forward"])
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default, one per core)"
    )
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument(
        "--channels-last",
        choices=("none", "masklab", "both"),
        default="none",
        help="NHWC weights and images: none; masklab only (what runtime.channels_last gives a masklab "
        "config); both sides (smp converted by hand)",
    )
    args = parser.parse_args()
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})

    import torch

    from masklab.structures.batch import Batch
    from masklab.structures.sample import SampleMeta

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(2, 3, args.size, args.size)
    label = torch.randint(0, 19, (2, args.size, args.size))
    label[:, :16] = 255
    batch = Batch(images=images, metas=[SampleMeta(), SampleMeta()], semantic=label)
    theirs = smp_models(19)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {os.getloadavg()}")
    print(
        f"batch 2 x 3 x {args.size} x {args.size}, median of {args.runs} interleaved runs after {args.warmup} warm-ups"
    )
    print(f"malloc tuning: {'off' if args.default_malloc else 'MALLOC_MMAP_MAX_=0 (both sides)'}")
    nhwc = torch.channels_last
    print(f"memory format: NHWC for {'no side' if args.channels_last == 'none' else args.channels_last}")
    smp_images = None
    if args.channels_last == "both":
        theirs = {k: m.to(memory_format=nhwc) for k, m in theirs.items()}  # type: ignore[attr-defined]
        smp_images = images.contiguous(memory_format=nhwc)
    for variant in args.variants:
        print(f"\n== masklab {variant}: {VARIANTS[variant]}")
        ours = masklab_models(19, matched=variant == "matched")
        check_architecture(ours, theirs, images, matched=variant == "matched")
        ml_batch = batch
        if args.channels_last != "none":
            ours = {k: m.to(memory_format=nhwc) for k, m in ours.items()}  # type: ignore[attr-defined]
            ml_batch = Batch(images=images.contiguous(memory_format=nhwc), metas=batch.metas, semantic=label)
            smp_images = smp_images if args.channels_last == "both" else images
        time_pairs(ours, theirs, ml_batch, args, smp_images)
    print(f"load avg at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
