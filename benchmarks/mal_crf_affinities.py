"""MAL's colour affinities: masklab's ``color_affinities`` vs the reference's unfold formulation.

The reference MAL code gathers every pixel's k x k neighbourhood with ``F.unfold`` and takes the
colour distance to the centre; masklab reads shifted views of one padded copy and computes each
pair of mirrored taps once (the distance is symmetric). Both give the same (B, k*k, H*W) weights
(checked here); times are per call, medians of ``--repeats`` alternating rounds, one process.

    .venv/bin/python benchmarks/mal_crf_affinities.py [--threads 1] [--batch 32] [--size 40] [--kernel 5]

The default shape is what labeling refines for a batch of 32 crops of the 80 px config at 2x the
logit grid (``evaluate.crf_refine_scale``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from masklab.models.mal.crf import color_affinities


def unfold_affinities(images: torch.Tensor, kernel_size: int, zeta: float) -> torch.Tensor:
    """The reference formulation: unfold the neighbourhoods, distance to the centre, mask the border."""
    b, c, h, w = images.shape
    k, pad = kernel_size, kernel_size // 2
    neigh = F.unfold(images, k, padding=pad).view(b, c, k * k, h * w)
    dist2 = (neigh - images.reshape(b, c, 1, h * w)).pow(2).sum(1)
    valid = F.unfold(images.new_ones(1, 1, h, w), k, padding=pad)
    return torch.exp(-dist2 / (2 * zeta * zeta)) * valid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--zeta", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    ours = color_affinities(images, args.kernel, args.zeta)
    ref = unfold_affinities(images, args.kernel, args.zeta)
    diff = (ours - ref).abs().max().item()
    times: dict[str, list[float]] = {"masklab": [], "unfold": []}
    fns = {
        "masklab": lambda: color_affinities(images, args.kernel, args.zeta),
        "unfold": lambda: unfold_affinities(images, args.kernel, args.zeta),
    }
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(
        f"colour affinities, {args.batch}x3x{args.size}x{args.size}, k {args.kernel}, {args.threads} thread(s); "
        f"max |masklab - unfold| {diff:.1e}"
    )
    for name, ms in med.items():
        print(f"  {name:8s} {ms:7.3f} ms/call  (rounds: {', '.join(f'{t:.3f}' for t in times[name])})")
    print(f"  ratio masklab / unfold: {med['masklab'] / med['unfold']:.2f}")


if __name__ == "__main__":
    main()
