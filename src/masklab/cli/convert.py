"""``masklab convert hf-mask2former SRC DST`` / ``masklab convert mmseg SRC DST --config CFG``: import
weights from other frameworks."""

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
    mm = sub.add_parser(
        "mmseg",
        help="an MMSegmentation 0.x / 1.x checkpoint (FCN, PSPNet, DeepLabV3(+), UPerNet, FPN, SegFormer)",
        description="Write a masklab checkpoint DST holding the weights of the MMSeg checkpoint SRC renamed for "
        "the model of CFG, checked against it (every weight, every shape, the class count), with the "
        "checkpoint's class names and palette. SRC is unpickled without importing mmseg/mmengine/mmcv: "
        "their objects become inert stand-ins.",
    )
    mm.add_argument("src", help="MMSeg checkpoint (.pth): a training checkpoint or a bare state dict")
    mm.add_argument("dst", help="masklab checkpoint to write (.pth)")
    mm.add_argument(
        "--config", required=True, metavar="CFG", help="the masklab config whose model the weights are for"
    )
    mm.add_argument(
        "overrides", nargs="*", help="dotted overrides of CFG, e.g. model.backbone.model_name=resnet101c"
    )


def run(args: argparse.Namespace) -> int:
    if args.convert_command == "mmseg":
        return _run_mmseg(args)
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


def _run_mmseg(args: argparse.Namespace) -> int:
    from masklab.cli.common import resolve_for_cli
    from masklab.models.semantic.convert_mmseg import convert_mmseg_checkpoint

    rc = resolve_for_cli(args.config, args.overrides)
    result = convert_mmseg_checkpoint(args.src, args.dst, rc)
    for note in result.notes:
        print(note)
    extra = "".join(f" {o}" for o in args.overrides)  # the same model needs the same overrides
    print(
        f"converted {len(result.state)} tensors: {args.src} -> {args.dst} ({len(result.classes)} classes); "
        f"use it with its config: masklab evaluate {args.config} {args.dst}{extra}"
    )
    return 0
