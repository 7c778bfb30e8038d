"""Three-line inference::

    from masklab import Inferencer
    inferencer = Inferencer("configs/segformer/segformer_mit-b0_1xb8-1800i_synthetic-128x128.yaml", "work_dirs/demo/checkpoints/iter_0001800.pth")
    predictions = inferencer("images/", out_dir="out/")   # out/pred/**/*.png and out/vis/**/*.png

Inputs may be an image path, a folder (searched recursively, hidden files and folders skipped;
outputs mirror its subfolders), an (H, W, 3) RGB uint8 array, or a list of those; see
:mod:`masklab.inference.inputs` for the output names. Predictions are computed with the config's
``inference`` settings, ``evaluate``'s where ``inference`` leaves a key unset
(:mod:`masklab.inference.settings`). ``init_model``, ``inference_model`` and ``show_result`` are
the MMSeg-style function forms.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from masklab.config import registries
from masklab.config.build import build_node
from masklab.config.schema import ResolvedConfig
from masklab.data.meta import DatasetMeta
from masklab.errors import CheckpointError, ConfigError, DataError
from masklab.inference.arguments import check_opacity, custom_meta
from masklab.inference.inputs import (
    IMAGE_SUFFIXES,
    InferenceInput,
    check_unique_names,
    collect_inputs,
)
from masklab.inference.settings import inference_settings, setting_source
from masklab.structures import Batch, InstancePrediction, Sample, SampleMeta, SemanticPrediction

if TYPE_CHECKING:
    from masklab.engine.checkpoint import LoadReport

__all__ = [
    "IMAGE_SUFFIXES",
    "InferenceInput",
    "Inferencer",
    "collect_inputs",
    "inference_model",
    "init_model",
    "load_weights",
    "show_result",
]

Prediction = SemanticPrediction | InstancePrediction


class Inferencer:
    """Run a trained model on images and (optionally) write predictions and overlays.

    Args:
        config: a config path (or an already resolved config).
        weights: a checkpoint file; None takes ``inference.checkpoint`` (else ``evaluate.checkpoint``)
            and, when neither is set, keeps the freshly initialised weights (for smoke tests).
        device: ``auto``, ``cpu`` or ``cuda[:N]``; None (the default) takes the config's
            ``runtime.device``.
        overrides: dotted config overrides.
        classes: class names for the overlays, one per class the checkpoint was trained for.
        palette: overlay colours, one RGB triple of ints 0-255 per class.

    Attributes:
        settings: the effective ``inference`` section (unset keys taken from ``evaluate``).

    Raises:
        ConfigError: ``classes`` / ``palette`` that do not fit the model, a bad setting, a MAL
            config (it labels boxes: ``masklab infer --boxes``).
        CheckpointError: a missing checkpoint, or one for another model or task (naming the file).
    """

    def __init__(
        self,
        config: str | Path | ResolvedConfig,
        weights: str | Path | None = None,
        device: str | None = None,
        overrides: Sequence[str] = (),
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ) -> None:
        from masklab.config.assemble import apply_eval_settings, place_model, resolve, resolve_device
        from masklab.engine.checkpoint import check_checkpoint_task

        self.cfg = resolve(config, overrides)
        if self.cfg.task == "mal":  # else a misleading error about its datasets' class names
            raise ConfigError(
                f"{self.cfg.source}: a 'task: mal' config labels boxes, not whole images: masklab infer "
                "CFG CKPT --boxes BOXES.json --images DIR --out LABELS.json (in Python: "
                "masklab.cli.infer_boxes.label_boxes)"
            )
        self.settings = inference_settings(self.cfg)
        if weights is None:
            weights = self.settings.checkpoint
        if weights is not None:  # names both tasks, where a strict load would list every key
            check_checkpoint_task(weights, self.cfg.task, self.cfg.source)
        payload = load_payload(weights) if weights is not None else None
        saved = find_meta(self.cfg, payload)
        self.meta = custom_meta(saved, classes, palette)
        self.device = resolve_device(device or self.cfg.runtime.device)
        self.model: nn.Module = self._build(self.meta)
        if payload is not None:
            assert weights is not None
            self._load(payload, Path(weights), saved, classes)
        apply_eval_settings(self.model, self.cfg, self.settings)
        place_model(self.model, self.cfg, self.device).eval()
        self.pipeline = _test_pipeline(self.cfg)

    def _build(self, meta: DatasetMeta) -> nn.Module:
        """The model, its top-k (``model.test_topk``) tied to the inference ``max_dets``.

        The builder ties ``model.test_topk`` to ``evaluate.max_dets``; the Inferencer builds from a
        copy of the config whose ``evaluate.max_dets`` is the effective inference one.
        """
        from masklab.config.assemble import build_model

        rc, n = self.cfg, self.settings.max_dets
        if n != rc.evaluate.max_dets:
            written = rc.model.get("test_topk") if rc.model is not None else None
            if written is not None and written != n:
                raise ConfigError(
                    f"{rc.config.source('model.test_topk')}: model.test_topk: config says {written} but "
                    f"{setting_source(rc, 'max_dets')} is {n} (top-k per image at inference); set one of them"
                )
            rc = dataclasses.replace(rc, evaluate=dataclasses.replace(rc.evaluate, max_dets=n))
        return build_model(rc, meta)

    def _load(
        self, payload: dict[str, Any], path: Path, saved: DatasetMeta, classes: Sequence[str] | None
    ) -> None:
        """Strict load; a mismatch names the checkpoint file, or ``classes`` when its count is the cause."""
        try:
            load_weights(self.model, payload, path)
        except CheckpointError:
            n = len(saved.classes)
            if classes is not None and len(classes) != n and _fits(self._build(saved), payload):
                shown = ", ".join(saved.classes[:4]) + (", ..." if n > 4 else "")
                raise ConfigError(
                    f"classes: {len(classes)} names given but {path} holds a model for {n} classes "
                    f"({shown}); give {n} names"
                ) from None
            raise

    @torch.no_grad()
    def predict(self, inputs: Any, batch_size: int | None = None) -> list[tuple[InferenceInput, Prediction]]:
        """Predictions at each input's original resolution, paired with the input, in input order.

        ``batch_size`` defaults to ``inference.batch_size``. Under ``torchrun`` each rank predicts
        a disjoint share of the inputs and every rank gets the merged list back (in input order,
        so the written files equal a single process's).
        """
        return self._predict(collect_inputs(inputs), batch_size)

    def _predict(
        self, items: list[InferenceInput], batch_size: int | None
    ) -> list[tuple[InferenceInput, Prediction]]:
        from masklab.engine.distributed import all_gather_object, get_info

        batch_size = self.settings.batch_size if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: {batch_size!r}; expected an integer >= 1")
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
        """Batches hold images of one size only: a batch pads to its largest image, and the padding
        changes what the network sees at the borders, so an image's prediction would depend on
        the other images in its batch (and on ``batch_size``). Results come back in input order."""
        from masklab.data.loader import collate

        results: list[Prediction | None] = [None] * len(items)
        pending: dict[tuple[int, ...], list[int]] = {}

        def run(positions: list[int]) -> None:
            chunk = [items[k] for k in positions]
            samples = [self._sample(items[k], ids[k]) for k in positions]
            batch = self.model.data_preprocessor(collate(samples), training=False)
            for k, pred in zip(positions, self._forward(batch, chunk), strict=True):
                results[k] = _to_cpu(pred)

        for k, item in enumerate(items):
            group = pending.setdefault(tuple(item.image.shape), [])
            group.append(k)
            if len(group) == batch_size:
                run(pending.pop(tuple(item.image.shape)))
        for positions in pending.values():
            run(positions)
        assert all(pred is not None for pred in results), "every input is predicted once"
        return list(zip(items, results, strict=True))  # type: ignore[arg-type]

    def _forward(self, batch: Batch, chunk: list[InferenceInput]) -> list[Prediction]:
        """``model(batch, mode="predict")``; an image too small for the network, even padded to the
        size divisor, is one line naming the file and its size instead of a traceback from a layer."""
        try:
            return self.model(batch, mode="predict")
        except (RuntimeError, ValueError) as exc:
            reason = too_small_reason(exc)
            if reason is None:
                raise
            ph, pw = batch.images.shape[-2:]
            shown = ", ".join(f"{i.label} ({i.image.shape[1]}x{i.image.shape[2]})" for i in chunk[:3])
            more = f" and {len(chunk) - 3} more" if len(chunk) > 3 else ""
            crop = getattr(self.model, "crop_size", None)
            slide = getattr(self.model, "test_mode", None) == "slide" and crop is not None
            if slide and crop[0] <= ph and crop[1] <= pw:  # else the windows are the whole (padded) image
                raise DataError(
                    f"{shown}{more}: sliding windows of {crop[0]}x{crop[1]} are too small for this "
                    f"model ({reason}); use a larger {setting_source(self.cfg, 'crop_size')}"
                ) from exc
            raise DataError(
                f"{shown}{more}: too small for this model even padded to {ph}x{pw} ({reason}); "
                "use larger images (e.g. upscaled) or a model with a smaller output stride"
            ) from exc

    def __call__(
        self,
        inputs: Any,
        out_dir: str | Path | None = None,
        opacity: float | None = None,
        batch_size: int | None = None,
        image_ids: str | Path | None = None,
    ) -> list[Prediction]:
        """Predict, and write ``pred/`` and ``vis/`` under ``out_dir`` (rank 0 only).

        ``out_dir``, ``opacity`` and ``batch_size`` default to ``inference.out_dir`` (None: write
        nothing), ``inference.opacity`` and ``inference.batch_size``. Inputs whose outputs would
        overwrite each other are refused before anything runs. ``image_ids``: a COCO file whose
        ``images`` give the ``image_id`` of each input's entries in ``instances.json`` (matched by
        file name, :mod:`masklab.inference.image_ids`), so the results evaluate against it; an input
        it does not list is refused before anything runs.
        """
        from masklab.engine.distributed import is_main_process

        out = out_dir if out_dir is not None else self.settings.out_dir
        alpha = self._opacity(opacity) if out is not None or opacity is not None else 0.0
        items = collect_inputs(inputs)
        if out is not None:
            check_unique_names(items)
        ids = None
        if image_ids is not None:
            from masklab.inference.image_ids import coco_image_ids, lookup_image_ids

            found = lookup_image_ids(
                [item.relative for item in items], coco_image_ids(image_ids), str(image_ids)
            )
            ids = dict(zip((item.relative for item in items), found, strict=True))
        results = self._predict(items, batch_size)
        if out is not None and is_main_process():
            self.write(results, Path(out), alpha, ids)
        return [pred for _, pred in results]

    def _opacity(self, opacity: float | None) -> float:
        if opacity is not None:
            return check_opacity(opacity, "opacity")
        key = "inference.opacity"
        return check_opacity(self.settings.opacity, f"{self.cfg.config.source(key)}: {key}")

    def write(
        self,
        results: list[tuple[InferenceInput, Prediction]],
        out_dir: Path,
        opacity: float,
        image_ids: Mapping[str, int] | None = None,
    ) -> None:
        """``pred/<name>.png`` label maps (instance models: one ``pred/instances.json``) and
        ``vis/<name>.png`` overlays, ``<name>`` being each input's output name (subfolders mirrored).

        ``instances.json`` is a COCO results list; each entry's ``image_id`` is its input's index
        (in input order, folders sorted) or, with ``image_ids`` (relative path -> id), the COCO id,
        and ``file_name`` the input's path relative to its folder (``array_0003`` for arrays), so
        every result traces back to its file.

        All or nothing: the files are written into a hidden folder under ``out_dir`` and moved into
        place once every one is written; a failed write (full disk, ``ulimit -f``) is one
        ConfigError line and leaves ``out_dir`` as it was (:mod:`masklab.inference.staging`).
        """
        from masklab.inference.staging import staged_outputs
        from masklab.inference.writers import write_label_png, write_rgb_png
        from masklab.visualization.overlay import overlay_instances, overlay_semantic

        opacity = check_opacity(opacity, "opacity")
        check_unique_names([item for item, _ in results])
        palette = self.meta.palette or ()
        with staged_outputs(out_dir, "predictions") as stage:
            for item, pred in results:
                if isinstance(pred, SemanticPrediction):
                    write_label_png(stage / "pred" / f"{item.name}.png", pred.label_map)
                    vis = overlay_semantic(
                        item.image, pred.label_map, palette, opacity, self.meta.ignore_index
                    )
                else:
                    values = {a.name: a.values for a in self.meta.attributes}
                    vis = overlay_instances(
                        item.image,
                        pred,
                        self.meta.classes,
                        palette,
                        values,
                        self.settings.score_threshold,
                        opacity,
                    )
                write_rgb_png(stage / "vis" / f"{item.name}.png", vis)
            if results and isinstance(results[0][1], InstancePrediction):
                self._write_instances(results, stage / "pred" / "instances.json", image_ids)

    def _write_instances(
        self,
        results: list[tuple[InferenceInput, Prediction]],
        path: Path,
        image_ids: Mapping[str, int] | None = None,
    ) -> None:
        import json

        from masklab.atomic_files import atomic_write
        from masklab.data.coco.results import detections_from_prediction

        ids = self.meta.category_ids or tuple(range(len(self.meta.classes)))
        names = [a.name for a in self.meta.attributes]
        entries = [
            {**det.to_json(), "file_name": item.relative}
            | ({"image_id": image_ids[item.relative]} if image_ids is not None else {})
            for item, pred in results
            if isinstance(pred, InstancePrediction)
            for det in detections_from_prediction(pred, ids, names)
        ]
        text = json.dumps(entries)
        atomic_write(path, lambda f: f.write(text.encode()))

    def _sample(self, item: InferenceInput, index: int) -> Sample:
        h, w = int(item.image.shape[1]), int(item.image.shape[2])
        meta = SampleMeta(image_id=index, file_name=item.file_name, ori_shape=(h, w), img_shape=(h, w))
        sample = Sample(image=item.image, meta=meta)
        for transform in self.pipeline:
            sample = transform(sample)
        return sample


def _fits(model: nn.Module, payload: dict[str, Any]) -> bool:
    """Whether ``payload``'s weights load strictly into ``model``."""
    from masklab.engine.checkpoint import load_model_weights

    try:
        load_model_weights(model, payload, strict=True)
    except CheckpointError:
        return False
    return True


# Layers' own words for an input smaller than they can take (conv, pooling, resize, norm).
_KERNEL = re.compile(r"input size per channel: \((\d+) x (\d+)\)\. Kernel size: \((\d+) x (\d+)\)")
_TOO_SMALL = (
    "Kernel size can't be greater than actual input size",
    "Output size is too small",
    "output sizes should be greater than 0",
    "more than 1 value per channel",
)


def too_small_reason(exc: Exception) -> str | None:
    """What a layer said about a too-small input, shortened; None for any other error."""
    text = str(exc)
    if not any(s in text for s in _TOO_SMALL):
        return None
    kernel = _KERNEL.search(text)
    if kernel:
        h, w, kh, kw = kernel.groups()
        return f"a {kh}x{kw} kernel met a {h}x{w} feature map"
    if "more than 1 value per channel" in text:
        return "a normalisation layer saw a single value per channel"
    return text.split(".")[0][:120]


def _to_cpu(pred: Prediction) -> Prediction:
    """Predictions leave the device as soon as they are made (memory, and gathering across ranks)."""
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


def load_weights(model: nn.Module, payload: dict[str, Any], path: str | Path) -> LoadReport:
    """Strict :func:`~masklab.engine.checkpoint.load_model_weights` of a payload read from ``path``
    (:func:`load_payload`); a mismatch names that file, as ``masklab evaluate`` does, rather than
    ``<state dict>`` (the payload was read once, for its class names too)."""
    from masklab.engine.checkpoint import load_model_weights

    try:
        return load_model_weights(model, payload, strict=True)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("<state dict>", str(path), 1)) from None


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
def init_model(
    config: str | Path, checkpoint: str | Path | None = None, device: str | None = None
) -> Inferencer:
    """Build a ready-to-run model (wrapped in an :class:`Inferencer`)."""
    return Inferencer(config, checkpoint, device=device)


def inference_model(model: Inferencer, images: Any) -> Prediction | list[Prediction]:
    """Predict as MMSeg's ``inference_model``: one prediction for one image (a path or an array),
    a list for a list (or a folder)."""
    preds = model(images)
    if isinstance(images, (list, tuple)) or (isinstance(images, (str, Path)) and Path(images).is_dir()):
        return preds
    return preds[0]


def show_result(
    model: Inferencer,
    image: Any,
    result: Prediction,
    opacity: float = 0.5,
    out_file: str | Path | None = None,
) -> np.ndarray:
    """Overlay ``result`` on ``image``; also save it when ``out_file`` is given.

    Raises:
        ConfigError: ``result`` predicted on an image of another size, ``out_file`` a folder or
            not writable, ``opacity`` outside [0, 1].
    """
    from masklab.inference.writers import write_rgb_png
    from masklab.visualization.overlay import overlay_instances, overlay_semantic

    opacity = check_opacity(opacity, "opacity")
    if out_file is not None and Path(out_file).is_dir():
        raise ConfigError(
            f"out_file: {out_file} is a folder; expected an image file path such as {Path(out_file) / 'vis.png'}"
        )
    item = collect_inputs(image)[0]
    size = tuple(item.image.shape[-2:])
    got = tuple((result.label_map if isinstance(result, SemanticPrediction) else result.masks).shape[-2:])
    if got != size:
        raise ConfigError(
            f"result: predicted at {got[0]}x{got[1]} but image {item.label} is {size[0]}x{size[1]}; "
            "show a result on the image it was predicted from"
        )
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
        try:
            write_rgb_png(out_file, vis)
        except OSError as exc:
            raise ConfigError(f"out_file: cannot write {out_file} ({exc.strerror or exc})") from None
    return vis
