"""``masklab convert hf-mask2former SRC DST``: import weights from other frameworks."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", metavar="FORMAT", required=True)
    hf = sub.add_parser(
        "hf-mask2former",
        help="a Hugging Face Mask2Former (model folder, safetensors or state dict)",
        description="Write a masklab checkpoint DST and, beside it, the model config it loads into "
        "(DST with the suffix .yaml). The backbone becomes a timm one (HF ResNet -> resnet*, HF Swin -> swin_*).",
    )
    hf.add_argument(
        "src",
        help="HF model folder (config.json + model.safetensors or pytorch_model.bin), or the weights file itself",
    )
    hf.add_argument(
        "dst", help="masklab checkpoint to write (.pth); its model config goes beside it, suffix .yaml"
    )


def run(args: argparse.Namespace) -> int:
    from masklab.models.mask2former.convert_hf import convert_hf_mask2former

    result = convert_hf_mask2former(args.src, args.dst)
    print(f"converted {len(result.state)} tensors: {args.src} -> {args.dst} ({result.backbone})")
    if result.model is not None:
        layers = result.model["decoder"]["num_layers"]
        print(
            f"model config: {result.config_path} (HF decoder_layers {layers + 1} -> decoder.num_layers "
            f"{layers}); use it as a _base_ beside a dataset config, with {args.dst} as the checkpoint"
        )
    return 0
