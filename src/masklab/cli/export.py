"""``masklab export onnx|safetensors CFG CKPT --out FILE``.

``onnx`` writes a graph from pixels (B, 3, H, W, RGB 0..255) to logits; ``--dynamic`` frees batch
and size; ``--verify`` runs ONNX Runtime against PyTorch and prints the largest difference.
``safetensors`` writes the model weights only.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx", "safetensors"], help="what to write")
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("checkpoint", help="checkpoint file (or .safetensors weights)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--dynamic", action="store_true", help="onnx: free batch, height and width")
    parser.add_argument("--verify", action="store_true", help="onnx: compare ONNX Runtime with PyTorch")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="onnx: example size (default export.input_size)",
    )
    parser.add_argument("--opset", type=int, help="onnx: opset version (default export.opset)")


def run(args: argparse.Namespace) -> int:
    import torch

    from masklab.cli.common import resolve_for_cli
    from masklab.config.assemble import build_model
    from masklab.engine.checkpoint import export_safetensors, load_model_weights
    from masklab.inference.inferencer import find_meta, load_payload

    rc = resolve_for_cli(args.config, args.overrides)
    payload = load_payload(args.checkpoint)
    model = build_model(rc, find_meta(rc, payload)).eval()
    report = load_model_weights(model, payload, strict=True)
    if report.ema:
        print(report.message(str(args.checkpoint)))
    if args.format == "safetensors":
        print(f"weights -> {export_safetensors(model, args.out)}")
        return 0
    from masklab.export.onnx import export_onnx, verify_onnx

    size = tuple(args.input_size or rc.export.input_size)
    opset = args.opset or rc.export.opset
    path = export_onnx(model, args.out, input_size=size, opset=opset, dynamic=args.dynamic)
    print(f"onnx (opset {opset}, {'dynamic' if args.dynamic else 'static'} {list(size)}) -> {path}")
    if args.verify:
        torch.manual_seed(0)
        h, w = size
        if args.dynamic:  # check a second batch size and shape, too
            h, w = h + 32, w - 32 if w > 64 else w + 32
        report = verify_onnx(model, path, torch.rand(2 if args.dynamic else 1, 3, h, w) * 255)
        print(report.summary())
    return 0
