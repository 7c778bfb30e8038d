"""``masklab convert hf-mask2former SRC DST``: import weights from other frameworks."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", metavar="FORMAT", required=True)
    hf = sub.add_parser(
        "hf-mask2former", help="a Hugging Face Mask2Former checkpoint (safetensors or state dict)"
    )
    hf.add_argument("src", help="HF checkpoint: model.safetensors or pytorch_model.bin")
    hf.add_argument("dst", help="masklab checkpoint to write (.pth)")


def run(args: argparse.Namespace) -> int:
    from masklab.errors import CheckpointError
    from masklab.models.mask2former.convert_hf import convert_hf_mask2former

    src = Path(args.src)
    if not src.is_file():
        raise CheckpointError(f"{src}: checkpoint file not found")
    state = convert_hf_mask2former(src, args.dst)
    print(f"converted {len(state)} tensors: {src} -> {args.dst}")
    return 0
