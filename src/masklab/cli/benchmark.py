"""``masklab benchmark CFG [CKPT] --size H W``: parameters, FLOPs and inference speed of a model.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` over one ``predict``
forward of a ``1x3xHxW`` input (matrix products and convolutions; one multiply-add = 2 FLOPs; MMSeg's
``get_flops`` prints multiply-adds, so GMACs are shown too). Speed is the median over ``--runs``
timed calls after ``--warmup`` untimed ones, each call being the data preprocessor plus the
``predict`` forward in the config's evaluation mode (whole / slide, TTA), data loading excluded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masklab import strict_json

if TYPE_CHECKING:
    import torch
    from torch import nn

    from masklab.data.meta import DatasetMeta
    from masklab.structures import Batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("checkpoint", nargs="?", help="optional checkpoint (weights and class names)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. evaluate.mode=slide")
    parser.add_argument(
        "--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="input size"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: 5)")
    parser.add_argument("--runs", type=int, default=20, help="timed calls (default: 20)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: runtime.device)")
    parser.add_argument(
        "--num-classes", type=int, help="class count when neither checkpoint nor dataset is at hand"
    )
    parser.add_argument("--out", help="also write the numbers as JSON here")


def run(args: argparse.Namespace) -> int:
    from masklab.cli.common import resolve_for_cli
    from masklab.config.assemble import apply_eval_settings, build_model, place_model, resolve_device
    from masklab.errors import ConfigError

    if min(args.size) < 1 or args.runs < 1 or args.warmup < 0:
        raise ConfigError("benchmark: --size must be positive, --runs >= 1 and --warmup >= 0")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"benchmark --num-classes: expected a class count >= 1, got {args.num_classes}")
    if args.checkpoint is not None and "=" in args.checkpoint and not Path(args.checkpoint).is_file():
        # CKPT is optional: `benchmark CFG key=value` gives an override, not a checkpoint named so.
        args.overrides = [args.checkpoint, *args.overrides]
        args.checkpoint = None
    if args.out:  # before the run, not after minutes of timing
        from masklab.cli.output import check_output_file

        check_output_file(args.out, "--out", "benchmark.json")
    rc = resolve_for_cli(args.config, args.overrides)
    device = resolve_device(args.device or rc.runtime.device)
    payload = _load(args.checkpoint)
    model = build_model(rc, _meta(rc, payload, args.num_classes))
    if payload is not None:
        from masklab.inference.inferencer import load_weights

        load_weights(model, payload, args.checkpoint)  # a mismatch names the file
    apply_eval_settings(model, rc)
    place_model(model.eval(), rc, device)
    batch = _dummy_batch(*args.size)
    params = count_parameters(model)
    flops = _first_forward(model, batch, args.size)
    times = time_inference(model, batch, device, args.warmup, args.runs)
    median = statistics.median(times)
    result: dict[str, Any] = {
        "config": str(rc.source),
        "input": [1, 3, *args.size],
        "device": str(device),
        "params": params,
        "flops": flops,
        "seconds_median": median,
        "seconds_min": min(times),
        "seconds_max": max(times),
        "fps": 1.0 / median if median > 0 else float("inf"),
        "warmup": args.warmup,
        "runs": args.runs,
    }
    print(format_result(result))
    if args.out:
        from masklab.atomic_files import atomic_write

        text = strict_json.dumps(result, indent=2)
        atomic_write(args.out, lambda f: f.write(text.encode()))
        print(f"written to {args.out}")
    return 0


def _load(checkpoint: str | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    from masklab.engine.checkpoint import load_checkpoint
    from masklab.errors import CheckpointError

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint file not found")
    return load_checkpoint(checkpoint)


def _meta(rc: Any, payload: dict[str, Any] | None, num_classes: int | None) -> DatasetMeta | None:
    """Class metadata: ``--num-classes``, else the checkpoint's, else the val (or train) dataset's."""
    from masklab.data.meta import DatasetMeta

    if num_classes is not None:
        return DatasetMeta(classes=tuple(f"class{i}" for i in range(num_classes)))
    if payload is not None and payload.get("dataset_meta"):
        from masklab.data.meta import DatasetMeta

        return DatasetMeta.from_json(payload["dataset_meta"], where="checkpoint dataset_meta")
    from masklab.config.assemble import build_dataset, dataset_meta

    split = "val" if rc.dataset is not None and "val" in rc.dataset else "train"
    return dataset_meta(build_dataset(rc, split))


def _dummy_batch(h: int, w: int) -> Batch:
    """One random ``(3, h, w)`` uint8 image, collated like a real one."""
    import torch

    from masklab.data.collate import collate
    from masklab.structures import Sample, SampleMeta

    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return collate([Sample(image=image, meta=SampleMeta(ori_shape=(h, w), img_shape=(h, w)))])


def _first_forward(model: nn.Module, batch: Batch, size: list[int]) -> dict[str, Any]:
    """:func:`count_flops`, whose forward is the first: a ``--size`` too small for the network even
    padded to the size divisor is one line there, as ``masklab infer`` says it for an image."""
    from masklab.errors import ConfigError
    from masklab.inference.inferencer import too_small_reason

    try:
        return count_flops(model, batch)
    except (RuntimeError, ValueError) as exc:
        reason = too_small_reason(exc)
        if reason is None:
            raise
        divisor = getattr(model.data_preprocessor, "size_divisor", None) or 1
        padded = f" even padded to {-(-size[0] // divisor) * divisor}x{-(-size[1] // divisor) * divisor}"
        raise ConfigError(
            f"--size {size[0]} {size[1]}: too small for this model{padded if divisor > 1 else ''} "
            f"({reason}); use a larger --size"
        ) from None


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts (the data preprocessor's buffers are not parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def _predict(model: nn.Module, batch: Batch) -> Any:
    prepared = model.data_preprocessor(batch, training=False)  # type: ignore[operator]
    return model(prepared, mode="predict")


def count_flops(model: nn.Module, batch: Batch) -> dict[str, Any]:
    """FLOPs of one predict call, in total and per top-level operator."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        _predict(model, batch)
    by_op = counter.get_flop_counts().get("Global", {})
    return {"total": int(counter.get_total_flops()), "by_op": {str(k): int(v) for k, v in by_op.items()}}


def time_inference(
    model: nn.Module, batch: Batch, device: torch.device, warmup: int, runs: int
) -> list[float]:
    """Seconds per predict call for ``runs`` calls after ``warmup`` calls (CUDA synchronised)."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            start = time.perf_counter()
            _predict(model, batch)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def format_result(r: dict[str, Any]) -> str:
    """A few aligned lines for the console."""
    flops = r["flops"]["total"]
    ops = sorted(r["flops"]["by_op"].items(), key=lambda kv: -kv[1])[:4]
    share = ", ".join(f"{k.removeprefix('aten.')} {100 * v / flops:.0f}%" for k, v in ops) if flops else ""
    return "\n".join(
        [
            f"config   {r['config']}",
            f"input    {'x'.join(map(str, r['input']))} on {r['device']}",
            f"params   {r['params']['total'] / 1e6:.3f} M ({r['params']['trainable'] / 1e6:.3f} M trainable)",
            f"FLOPs    {flops / 1e9:.3f} G ({flops / 2e9:.3f} GMACs){f'; {share}' if share else ''}",
            f"latency  median {r['seconds_median'] * 1e3:.2f} ms (min {r['seconds_min'] * 1e3:.2f}, "
            f"max {r['seconds_max'] * 1e3:.2f}) over {r['runs']} runs after {r['warmup']} warm-up",
            f"fps      {r['fps']:.2f}",
        ]
    )
