"""Three-line inference::

    from masklab import Inferencer
    inferencer = Inferencer("configs/segformer/segformer_mit-b0_1xb8-1800i_synthetic-128x128.yaml", "work_dirs/demo/checkpoints/iter_0001800.pth")
    predictions = inferencer("images/", out_dir="out/")   # out/pred/*.png and out/vis/*.png

Inputs may be an image path, a folder, an (H, W, 3) RGB uint8 array, or a list of those.
``init_model``, ``inference_model`` and ``show_result`` are the MMSeg-style function forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from masklab.config import registries
from masklab.config.build import build_node
from masklab.config.schema import ResolvedConfig
from masklab.data.meta import DatasetMeta
from masklab.errors import CheckpointError, DataError
from masklab.structures import InstancePrediction, Sample, SampleMeta, SemanticPrediction

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Prediction = SemanticPrediction | InstancePrediction


@dataclass(frozen=True)
class InferenceInput:
    """One image to run on: its pixels and where it came from."""

    image: torch.Tensor  # (3, H, W) uint8
    name: str  # output file stem
    file_name: str = ""


def collect_inputs(inputs: Any) -> list[InferenceInput]:
    """Expand a path, folder, array or list of them into images (sorted within a folder)."""
    from masklab.data.io import read_image

    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    out: list[InferenceInput] = []
    for k, item in enumerate(items):
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[2] != 3:
                raise DataError(f"input #{k}: expected an (H, W, 3) RGB array, got shape {item.shape}")
            out.append(
                InferenceInput(
                    torch.from_numpy(np.ascontiguousarray(item.astype(np.uint8))).permute(2, 0, 1),
                    f"array_{k:04d}",
                )
            )
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out.extend(InferenceInput(read_image(f), f.stem, str(f)) for f in files)
        elif path.is_file():
            out.append(InferenceInput(read_image(path), path.stem, str(path)))
        else:
            raise DataError(f"{path}: no such image file or folder")
    return out


class Inferencer:
    """Run a trained model on images and (optionally) write predictions and overlays.

    Args:
        config: a config path (or an already resolved config).
        weights: a checkpoint file; None keeps the freshly initialised weights (for smoke tests).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        overrides: dotted config overrides.
        classes, palette: override the class names / colours used in overlays.
    """

    def __init__(
        self,
        config: str | Path | ResolvedConfig,
        weights: str | Path | None = None,
        device: str = "auto",
        overrides: Sequence[str] = (),
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ) -> None:
        from masklab.config.assemble import (
            apply_eval_settings,
            build_model,
            place_model,
            resolve,
            resolve_device,
        )

        self.cfg = resolve(config, overrides)
        payload = load_payload(weights) if weights is not None else None
        meta = find_meta(self.cfg, payload)
        if classes is not None or palette is not None:
            meta = DatasetMeta(
                classes=tuple(classes) if classes is not None else meta.classes,
                palette=tuple(tuple(p) for p in palette)
                if palette is not None
                else (meta.palette if classes is None else None),
                attributes=meta.attributes,
                ignore_index=meta.ignore_index,
                category_ids=meta.category_ids,
            )
        self.meta = meta
        self.device = resolve_device(device)
        self.model: nn.Module = build_model(self.cfg, meta)
        if payload is not None:
            from masklab.engine.checkpoint import load_model_weights

            load_model_weights(self.model, payload, strict=True)
        apply_eval_settings(self.model, self.cfg)
        place_model(self.model, self.cfg, self.device).eval()
        self.pipeline = _test_pipeline(self.cfg)

    @torch.no_grad()
    def predict(self, inputs: Any, batch_size: int = 1) -> list[tuple[InferenceInput, Prediction]]:
        """Predictions at each input's original resolution, paired with the input, in input order.

        Under ``torchrun`` each rank predicts a disjoint share of the inputs and every rank gets
        the merged list back (in input order, so the written files equal a single process's).
        """
        from masklab.engine.distributed import all_gather_object, get_info

        items = collect_inputs(inputs)
        info = get_info()
        indices = (
            list(range(info.rank, len(items), info.world_size))
            if info.is_distributed
            else list(range(len(items)))
        )
        mine = self._predict_items([items[i] for i in indices], indices, batch_size)
        if not info.is_distributed:
            return mine
        pairs = [(i, pred) for i, (_, pred) in zip(indices, mine)]
        merged = sorted((p for shard in all_gather_object(pairs) for p in shard), key=lambda p: p[0])
        return [(items[i], pred) for i, pred in merged]

    def _predict_items(
        self, items: list[InferenceInput], ids: list[int], batch_size: int
    ) -> list[tuple[InferenceInput, Prediction]]:
        from masklab.data.loader import collate
        from masklab.engine.norm_guard import single_value_norm_guard

        results: list[tuple[InferenceInput, Prediction]] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            samples = [self._sample(item, ids[start + i]) for i, item in enumerate(chunk)]
            batch = self.model.data_preprocessor(collate(samples), training=False)
            with single_value_norm_guard(batch.images, "inference"):
                preds = self.model(batch, mode="predict")
            results.extend(zip(chunk, [_to_cpu(p) for p in preds]))
        return results

    def __call__(
        self,
        inputs: Any,
        out_dir: str | Path | None = None,
        opacity: float | None = None,
        batch_size: int = 1,
    ) -> list[Prediction]:
        """Predict, and when ``out_dir`` is given write ``pred/`` and ``vis/`` there (rank 0 only)."""
        from masklab.engine.distributed import is_main_process

        results = self.predict(inputs, batch_size=batch_size)
        if out_dir is not None and is_main_process():
            self.write(results, Path(out_dir), self.cfg.inference.opacity if opacity is None else opacity)
        return [pred for _, pred in results]

    def write(self, results: list[tuple[InferenceInput, Prediction]], out_dir: Path, opacity: float) -> None:
        from masklab.inference.writers import write_label_png, write_rgb_png
        from masklab.visualization.overlay import overlay_instances, overlay_semantic

        palette = self.meta.palette or ()
        for item, pred in results:
            if isinstance(pred, SemanticPrediction):
                write_label_png(out_dir / "pred" / f"{item.name}.png", pred.label_map)
                vis = overlay_semantic(item.image, pred.label_map, palette, opacity, self.meta.ignore_index)
            else:
                values = {a.name: a.values for a in self.meta.attributes}
                vis = overlay_instances(
                    item.image,
                    pred,
                    self.meta.classes,
                    palette,
                    values,
                    self.cfg.inference.score_threshold,
                    opacity,
                )
            write_rgb_png(out_dir / "vis" / f"{item.name}.png", vis)
        if results and isinstance(results[0][1], InstancePrediction):
            from masklab.data.coco.results import write_prediction_results

            write_prediction_results(
                out_dir / "pred" / "instances.json",
                [p for _, p in results],
                self.meta.category_ids,
                self.meta.attributes,
            )

    def _sample(self, item: InferenceInput, index: int) -> Sample:
        h, w = int(item.image.shape[1]), int(item.image.shape[2])
        meta = SampleMeta(image_id=index, file_name=item.file_name, ori_shape=(h, w), img_shape=(h, w))
        sample = Sample(image=item.image, meta=meta)
        for transform in self.pipeline:
            sample = transform(sample)
        return sample


def _to_cpu(pred: Prediction) -> Prediction:
    """Predictions leave the device as soon as they are made (memory, and gathering across ranks)."""
    import dataclasses

    changes = {
        f.name: getattr(pred, f.name).cpu()
        for f in dataclasses.fields(pred)
        if isinstance(getattr(pred, f.name), torch.Tensor)
    }
    return dataclasses.replace(pred, **changes) if changes else pred


def load_payload(weights: str | Path) -> dict[str, Any]:
    from masklab.engine.checkpoint import load_checkpoint

    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return load_checkpoint(path)


def find_meta(cfg: ResolvedConfig, payload: dict[str, Any] | None) -> DatasetMeta:
    """Class names and palette: from the checkpoint when it carries them, else the val dataset."""
    saved = (payload or {}).get("dataset_meta")
    if saved:
        return DatasetMeta.from_json(saved, where="checkpoint dataset_meta")
    from masklab.config.assemble import build_dataset, dataset_meta

    split = "val" if cfg.dataset is not None and "val" in cfg.dataset else "train"
    meta = dataset_meta(build_dataset(cfg, split))
    if meta is None:
        raise CheckpointError(
            f"{cfg.source}: cannot tell the class names: the checkpoint has no dataset metadata and dataset.{split} has none"
        )
    return meta


def _test_pipeline(cfg: ResolvedConfig) -> list[Any]:
    """The val dataset's transforms (resizes etc.), without loading the dataset."""
    if cfg.dataset is None or "val" not in cfg.dataset:
        return []
    nodes = cfg.dataset["val"].get("pipeline") or []
    return [
        build_node(node, path=f"dataset.val.pipeline.{i}", source=cfg.source, registry=registries.TRANSFORMS)
        for i, node in enumerate(nodes)
    ]


# ------------------------------------------------------------------ MMSeg-style function forms
def init_model(config: str | Path, checkpoint: str | Path | None = None, device: str = "auto") -> Inferencer:
    """Build a ready-to-run model (wrapped in an :class:`Inferencer`)."""
    return Inferencer(config, checkpoint, device=device)


def inference_model(model: Inferencer, images: Any) -> list[Prediction]:
    """Predictions for one image or a list of them."""
    return model(images)


def show_result(
    model: Inferencer,
    image: Any,
    result: Prediction,
    opacity: float = 0.5,
    out_file: str | Path | None = None,
) -> np.ndarray:
    """Overlay ``result`` on ``image``; also save it when ``out_file`` is given."""
    from masklab.inference.writers import write_rgb_png
    from masklab.visualization.overlay import overlay_instances, overlay_semantic

    item = collect_inputs(image)[0]
    if isinstance(result, SemanticPrediction):
        vis = overlay_semantic(
            item.image, result.label_map, model.meta.palette or (), opacity, model.meta.ignore_index
        )
    else:
        vis = overlay_instances(
            item.image,
            result,
            model.meta.classes,
            model.meta.palette or (),
            {a.name: a.values for a in model.meta.attributes},
            opacity=opacity,
        )
    if out_file is not None:
        write_rgb_png(out_file, vis)
    return vis
