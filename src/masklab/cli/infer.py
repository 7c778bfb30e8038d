"""``masklab infer CFG CKPT --input PATH_OR_DIR --out DIR [key=value ...]``.

Writes ``DIR/pred/`` (label PNGs, or ``instances.json`` for instance models) and ``DIR/vis/``
(overlays), named by each image's path relative to the input folder (subfolders mirrored; see
:mod:`masklab.inference.inputs`). Predictions use the config's ``inference`` section, with
``evaluate``'s value for any key it leaves unset (:mod:`masklab.inference.settings`); ``--out``
defaults to ``inference.out_dir``. Box-prompted models (MAL) take ``--boxes BOXES.json --images DIR
--out LABELS.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides")
    parser.add_argument("--input", help="an image file or a folder of images")
    parser.add_argument(
        "--out", help="output folder (default inference.out_dir), or the JSON file with --boxes"
    )
    parser.add_argument(
        "--opacity", type=float, default=None, help="overlay opacity in [0, 1] (default inference.opacity)"
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu or cuda[:N] (default: the config's runtime.device)"
    )
    parser.add_argument(
        "--image-ids",
        help="instance models: a COCO file whose images give each result's image_id (matched by file name)",
    )
    parser.add_argument("--boxes", help="MAL: COCO JSON with the boxes to label")
    parser.add_argument("--images", help="MAL: folder of the images the boxes refer to")
    parser.add_argument("--vis", action="store_true", help="MAL: also write overlays of the pseudo-masks")


def run(args: argparse.Namespace) -> int:
    from masklab.errors import ConfigError

    if importlib.util.find_spec("masklab.cli.infer_boxes") is None:
        if args.boxes is not None:
            raise ConfigError("infer --boxes: box-prompted labeling is not available in this build")
    else:
        from masklab.cli import infer_boxes

        # MAL labeling: --boxes, or a 'task: mal' config (paths from its inference section); a MAL
        # checkpoint given with another task's config is refused there in one line.
        if infer_boxes.is_labeling_call(args):
            return infer_boxes.run(args)
    if args.input is None:
        raise ConfigError("infer: --input PATH_OR_DIR is required (or --boxes/--images for MAL)")
    from masklab.cli.common import resolve_for_cli
    from masklab.cli.output import check_output_dir
    from masklab.config.assemble import resolve_device
    from masklab.engine.distributed import get_info, init_distributed, is_main_process, teardown
    from masklab.inference.arguments import check_opacity
    from masklab.inference.inferencer import Inferencer
    from masklab.inference.settings import inference_settings

    if args.opacity is not None:
        check_opacity(args.opacity, "--opacity")
    rc = resolve_for_cli(args.config, args.overrides)
    out = args.out or inference_settings(rc).out_dir
    if out is None:
        raise ConfigError("infer: --out DIR is required (or set inference.out_dir in the config)")
    # Checked before the model runs: a file in the way would otherwise fail only at the first write.
    check_output_dir(out, "--out" if args.out else "inference.out_dir")
    if "LOCAL_RANK" in os.environ:  # under torchrun: each rank predicts its share, rank 0 writes
        init_distributed(device=resolve_device(args.device or rc.runtime.device))
    try:
        inferencer = Inferencer(rc, args.checkpoint, device=args.device or rc.runtime.device)
        preds = inferencer(args.input, out_dir=out, opacity=args.opacity, image_ids=args.image_ids)
        if is_main_process():
            ranks = get_info().world_size
            shared = f" (shared by {ranks} processes)" if ranks > 1 else ""
            print(f"{len(preds)} images{shared} -> {out}/pred and {out}/vis")
    finally:
        teardown()
    return 0
