"""``masklab browse-dataset CFG --split train --out DIR --num N``: look at what the model is fed.

Each of the first ``N`` samples goes through the split's pipeline (random transforms included,
seeded by ``--seed``) and is written as ``DIR/<index>_<name>.png``: the image beside the same image
with its semantic map, instance masks, boxes and attribute captions drawn on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from masklab.data.meta import DatasetMeta
    from masklab.structures import Sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dataset.root=data/x")
    parser.add_argument("--split", default="train", help="dataset split to render (default: train)")
    parser.add_argument("--out", default="browse", help="folder for the PNGs (default: browse)")
    parser.add_argument("--num", type=int, default=16, help="how many samples (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random transforms")
    parser.add_argument("--opacity", type=float, default=0.5, help="label opacity over the image")


def run(args: argparse.Namespace) -> int:
    import torch

    from masklab.cli.common import resolve_for_cli
    from masklab.cli.output import check_output_dir
    from masklab.config.assemble import build_dataset, dataset_meta
    from masklab.data.io import write_png_atomic
    from masklab.data.meta import DatasetMeta
    from masklab.errors import ConfigError
    from masklab.inference.arguments import check_opacity
    from masklab.visualization.sample_view import render_sample

    if args.num < 1:
        raise ConfigError(f"browse-dataset --num: expected >= 1, got {args.num}")
    check_opacity(args.opacity, "browse-dataset --opacity")
    check_output_dir(args.out, "--out")  # before the samples are loaded
    rc = resolve_for_cli(args.config, args.overrides)
    dataset = build_dataset(rc, args.split)
    meta = dataset_meta(dataset)
    if meta is None:
        meta = DatasetMeta(classes=tuple(str(i) for i in range(256)))
    torch.manual_seed(args.seed)
    out = Path(args.out)
    count = min(args.num, len(dataset))
    rendered = []  # every sample is loaded before anything is written: a bad one leaves no partial folder
    for index in range(count):
        sample = dataset[index]
        name = Path(sample.meta.file_name).stem if sample.meta.file_name else f"image{sample.meta.image_id}"
        rendered.append((out / f"{index:04d}_{name}.png", render_sample(sample, meta, args.opacity), sample))
    for path, picture, sample in rendered:
        write_png_atomic(path, picture)
        print(f"{path}: {_describe(sample, meta)}")
    print(f"{count} of {len(dataset)} samples of dataset.{args.split} rendered to {out}")
    return 0


def _describe(sample: Sample, meta: DatasetMeta) -> str:
    """``HxW; classes: road, car`` (semantic) or ``HxW; 3 instances: car x2, person`` for the console."""
    import torch

    h, w = sample.image.shape[-2:]
    parts = [f"{h}x{w}"]
    if sample.semantic is not None:
        ids = [int(v) for v in torch.unique(sample.semantic) if int(v) != meta.ignore_index]
        names = [meta.classes[i] if i < meta.num_classes else str(i) for i in ids]
        parts.append("classes: " + (", ".join(names) or "none"))
    if sample.instances is not None:
        from collections import Counter

        counts = Counter(int(v) for v in sample.instances.labels)
        names = [
            (meta.classes[i] if 0 <= i < meta.num_classes else str(i)) + (f" x{n}" if n > 1 else "")
            for i, n in sorted(counts.items())
        ]
        parts.append(f"{len(sample.instances)} instances" + (": " + ", ".join(names) if names else ""))
    return "; ".join(parts)
