"""``masklab export [onnx|safetensors] CFG CKPT [overrides] --out FILE``.

``onnx`` writes a graph from pixels (B, 3, H, W, RGB 0..255) to logits, giving what ``masklab
infer`` gives for a whole image without TTA (normalisation, padding to the size divisor and the
crop back are in the graph); ``--dynamic`` / ``--static`` free or fix batch and size; ``--verify``
runs ONNX Runtime against masklab's inference and prints the largest difference. ``safetensors``
writes the model weights only. The format, opset, dynamic axes and example size default to the
config's ``export`` section (``format``, ``opset``, ``dynamic``, ``input_size``); the command line
overrides them. Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from masklab.config.schema import ResolvedConfig

FORMATS = ("onnx", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The format word is optional (export.format), so the positionals are sorted out in
    # _positionals: argparse would take a config path for the format.
    parser.add_argument("first", metavar="[onnx|safetensors] config", help="what to write (default "
                        "export.format), then the path to a YAML config")  # fmt: skip
    parser.add_argument("second", metavar="checkpoint", help="checkpoint file (or .safetensors weights)")
    parser.add_argument("third", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides")
    parser.add_argument("--out", required=True, help="output file")
    dyn = parser.add_mutually_exclusive_group()
    dyn.add_argument(
        "--dynamic",
        dest="dynamic",
        action="store_const",
        const=True,
        default=None,
        help="onnx: free batch, height and width (default export.dynamic)",
    )
    dyn.add_argument(
        "--static", dest="dynamic", action="store_const", const=False, help="onnx: fixed batch 1 and size"
    )
    parser.add_argument(
        "--verify", action="store_true", help="onnx: compare ONNX Runtime with masklab's inference"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="onnx: example size, the input size of a static graph (default export.input_size)",
    )
    parser.add_argument("--opset", type=int, help="onnx: opset version (default export.opset)")


def _positionals(args: argparse.Namespace) -> tuple[str | None, str, str, list[str]]:
    """(format or None, config, checkpoint, overrides) from ``[FORMAT] CONFIG CHECKPOINT [k=v ...]``."""
    from masklab.errors import ConfigError

    if args.first in FORMATS:
        if args.third is None:
            raise ConfigError(f"export {args.first}: expected a config and a checkpoint after the format")
        return args.first, args.second, args.third, list(args.overrides)
    rest = [] if args.third is None else [args.third]
    return None, args.first, args.second, [*rest, *args.overrides]


def run(args: argparse.Namespace) -> int:
    from masklab.cli.common import resolve_for_cli
    from masklab.cli.output import check_output_file
    from masklab.config.assemble import build_model
    from masklab.engine.checkpoint import export_safetensors
    from masklab.inference.inferencer import find_meta, load_payload, load_weights

    fmt, config, checkpoint, overrides = _positionals(args)
    rc = resolve_for_cli(config, overrides)
    fmt = fmt or rc.export.format
    example = "model.onnx" if fmt == "onnx" else "model.safetensors"
    out = check_output_file(args.out, "--out", example)
    settings = _onnx_settings(args, rc) if fmt == "onnx" else None
    payload = load_payload(checkpoint)
    model = build_model(rc, find_meta(rc, payload)).eval()
    report = load_weights(model, payload, checkpoint)
    if report.ema:
        print(report.message(str(checkpoint)))
    if fmt == "safetensors":
        print(f"weights -> {export_safetensors(model, out)}")
        return 0
    assert settings is not None
    return _export_onnx(args, rc, model, out, settings)


@dataclasses.dataclass(frozen=True)
class _OnnxSettings:
    """What ``export onnx`` writes, each value from its flag or else its ``export`` key."""

    size: tuple[int, int]
    size_name: str  # how errors name it: the flag or the config key
    opset: int
    opset_name: str
    dynamic: bool


def _onnx_settings(args: argparse.Namespace, rc: ResolvedConfig) -> _OnnxSettings:
    """The flags, else ``export.input_size`` / ``export.opset`` / ``export.dynamic``, checked as the
    config's values are, each error naming the flag or the config key it came from."""
    from masklab.errors import ConfigError
    from masklab.export.onnx import check_opset

    def key(name: str) -> str:
        return f"{rc.config.source(f'export.{name}')}: export.{name}"

    if args.input_size is not None:
        try:  # the check export.input_size gets when the config is read
            dataclasses.replace(rc.export, input_size=list(args.input_size))
        except ValueError as exc:
            shown = " ".join(map(str, args.input_size))
            raise ConfigError(f"--input-size {shown}: {str(exc).split(': ', 1)[-1]}") from None
    h, w = args.input_size or rc.export.input_size
    opset_name = "--opset" if args.opset is not None else key("opset")
    return _OnnxSettings(
        size=(int(h), int(w)),
        size_name="--input-size" if args.input_size is not None else key("input_size"),
        opset=check_opset(rc.export.opset if args.opset is None else args.opset, opset_name),
        opset_name=opset_name,
        dynamic=rc.export.dynamic if args.dynamic is None else args.dynamic,
    )


def _export_onnx(
    args: argparse.Namespace, rc: ResolvedConfig, model: torch.nn.Module, out: Path, settings: _OnnxSettings
) -> int:
    import torch

    from masklab.export.onnx import export_onnx, verify_onnx

    s = settings
    path = export_onnx(model, out, s.size, s.opset, s.dynamic, opset_name=s.opset_name, size_name=s.size_name)
    print(f"onnx (opset {s.opset}, {'dynamic' if s.dynamic else 'static'} {list(s.size)}) -> {path}")
    _note_inference_mode(rc)
    if args.verify:
        torch.manual_seed(0)
        for shape in verify_shapes(s.size, s.dynamic, getattr(model.data_preprocessor, "size_divisor", None)):
            print(verify_onnx(model, path, torch.rand(*shape) * 255).summary())
    return 0


def verify_shapes(size: tuple[int, int], dynamic: bool, size_divisor: int | None) -> list[tuple[int, ...]]:
    """Inputs ``--verify`` runs: the export size; with free axes also batch 2 at another size and a
    size that is not a multiple of the network's stride (32, or the size divisor), where a graph
    that baked in a shape decision made at the traced size goes wrong."""
    h, w = size
    if not dynamic:
        return [(1, 3, h, w)]
    stride = max(32, size_divisor or 1)

    def odd(n: int, step: int) -> int:
        return n + step if (n + step) % stride else n + step + 2

    return [(2, 3, h + 32, w - 32 if w > 64 else w + 32), (1, 3, odd(h, 7), odd(w, 13))]


def _note_inference_mode(rc: ResolvedConfig) -> None:
    """Say so when ``masklab infer`` with this config would not predict what the graph predicts."""
    from masklab.inference.settings import inference_settings, setting_source

    settings = inference_settings(rc)
    differs = []
    if settings.mode == "slide":
        differs.append(f"{setting_source(rc, 'mode')}: slide")
    if list(settings.tta.scales) != [1.0] or settings.tta.flip:
        differs.append(
            f"{setting_source(rc, 'tta')} (scales {list(settings.tta.scales)}, flip {settings.tta.flip})"
        )
    if differs:
        print(
            f"note: the graph predicts whole images without TTA; `masklab infer` with this config uses {', '.join(differs)}"
        )
