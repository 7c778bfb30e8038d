"""masklab Mask2Former vs Hugging Face transformers Mask2Former on CPU, side by side in one process.

Same configuration on both sides (ResNet-18 backbone, hidden 256, 100 queries, 9 decoder layers, 6 encoder
layers, 80 classes), same input (batch 2, 256x256, 3 rectangular instances per image), random weights.
Prints medians after warm-up and the masklab / HF ratios (target: train step <= 0.7, forward <= 0.6),
with the 1-minute load average before and after: on a shared machine the ratio moves with the load
(per-op thread hand-offs cost more when other processes hold the cores), so quote both.

Train step = forward + matching + losses of every prediction point + backward on both sides; forward =
``predict_outputs`` (masklab) and ``model(pixel_values)`` (HF), each computing the class and mask logits
of every decoder layer (HF returns the last layer's and the auxiliary ones). The ``infer`` row times
what masklab's inference runs, ``predict_outputs(all_layers=False)``: the final layer's logits only,
the intermediate attention masks formed from mask features resized once per level (equal by
linearity, tested), against the same HF forward (which computes every layer's full-resolution masks).

    MALLOC_MMAP_MAX_=0 .venv/bin/python benchmarks/mask2former_vs_hf.py --runs 5 --threads 2
    python benchmarks/mask2former_vs_hf.py --device cuda --runs 20 --warmup 5   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch


def _paired_medians(
    a: Callable[[], object], b: Callable[[], object], runs: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run alternately so that machine-load drift hits both alike
    (on CUDA the device is synchronised before and after each call)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for _ in range(runs):
        for fn, times in ((a, times_a), (b, times_b)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times_a), statistics.median(times_b)


def _inputs(batch: int, size: int, num_classes: int, seed: int = 0):  # noqa: ANN202 - script helper
    from masklab.structures import Batch, Instances, SampleMeta
    from masklab.structures.instances import masks_to_boxes

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    instances = []
    for _ in range(batch):
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        for k in range(3):
            x1, y1 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            w, h = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
            masks[k, y1 : y1 + h, x1 : x1 + w] = True
        labels = torch.randint(0, num_classes, (3,), generator=g)
        instances.append(Instances(masks=masks, boxes=masks_to_boxes(masks), labels=labels))
    metas = [
        SampleMeta(ori_shape=(size, size), img_shape=(size, size), pad_shape=(size, size))
        for _ in range(batch)
    ]
    return Batch(images=images, metas=metas, instances=instances)


def build_masklab(num_classes: int) -> torch.nn.Module:
    import functools

    from masklab.models.backbones.timm_backbone import TimmBackbone
    from masklab.models.mask2former import (
        Mask2Former,
        Mask2FormerTransformerDecoder,
        MSDeformAttnPixelDecoder,
    )

    return Mask2Former(
        TimmBackbone("resnet18", out_indices=(1, 2, 3, 4)),
        num_classes=num_classes,
        pixel_decoder=functools.partial(MSDeformAttnPixelDecoder, num_layers=6),
        decoder=functools.partial(Mask2FormerTransformerDecoder, num_queries=100, num_layers=9),
        data_preprocessor=torch.nn.Identity(),
    )


def build_hf(num_classes: int) -> torch.nn.Module:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

    backbone = ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone, num_labels=num_classes, decoder_layers=10, encoder_layers=6
    )
    return Mask2FormerForUniversalSegmentation(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu (the issue's target) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_classes = 80
    batch = _inputs(2, args.size, num_classes).to(device)
    ours, hf = build_masklab(num_classes).to(device), build_hf(num_classes).to(device)
    hf_labels = [inst.labels for inst in batch.instances]
    hf_masks = [inst.masks.float() for inst in batch.instances]

    def ours_train() -> None:
        ours.train()
        ours.zero_grad(set_to_none=True)
        sum(ours(batch, mode="loss").values()).backward()

    def hf_train() -> None:
        hf.train()
        hf.zero_grad(set_to_none=True)
        hf(pixel_values=batch.images, mask_labels=hf_masks, class_labels=hf_labels).loss.backward()

    def ours_forward() -> None:
        ours.eval()
        with torch.inference_mode():
            ours.predict_outputs(batch.images)

    def hf_forward() -> None:
        hf.eval()
        with torch.inference_mode():
            hf(pixel_values=batch.images)

    def ours_inference() -> None:
        ours.eval()
        with torch.inference_mode():
            ours.predict_outputs(batch.images, all_layers=False)

    load_before = os.getloadavg()[0]
    results = {
        "train": _paired_medians(ours_train, hf_train, args.runs, args.warmup, device),
        "forward": _paired_medians(ours_forward, hf_forward, args.runs, args.warmup, device),
        "infer": _paired_medians(ours_inference, hf_forward, args.runs, args.warmup, device),
    }
    params = (sum(p.numel() for p in ours.parameters()) / 1e6, sum(p.numel() for p in hf.parameters()) / 1e6)
    print(f"params (M): masklab {params[0]:.2f}  hf {params[1]:.2f}")
    print(f"device: {device}, torch threads: {args.threads}")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    for name, (t_ours, t_hf) in results.items():
        print(f"{name:8s} masklab {t_ours:.3f}s  hf {t_hf:.3f}s  ratio {t_ours / t_hf:.2f}")


if __name__ == "__main__":
    main()
