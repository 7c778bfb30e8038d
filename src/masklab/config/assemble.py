"""Turn a resolved config into the objects of a run: datasets, model, evaluator, trainer.

This is the one place (with the CLI) where config sections become objects. Every family goes
through the same functions; what differs per task (the default evaluator) is a small table.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklab.config import registries
from masklab.config.build import build_node, node_factory
from masklab.config.check import SPLITS, check_config
from masklab.config.load import load_config
from masklab.config.nodes import Config
from masklab.config.schema import ResolvedConfig
from masklab.errors import ConfigError, MasklabError


def resolve(config: str | Path | Config | ResolvedConfig, overrides: Iterable[str] = ()) -> ResolvedConfig:
    """Load (if needed) and validate a config: every key of every section and node (see
    :func:`masklab.config.check.check_config`)."""
    if isinstance(config, ResolvedConfig):
        return config
    cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
    return check_config(cfg)  # sections and every node, nothing built: all problems in one line


def place_model(model: torch.nn.Module, rc: ResolvedConfig, device: torch.device) -> torch.nn.Module:
    """Move ``model`` to ``device``, in NHWC layout when ``runtime.channels_last`` is set (the
    trainer, the evaluator, the Inferencer and ``masklab benchmark`` all place it this way)."""
    model.to(device)
    if rc.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def apply_process_settings(rc: ResolvedConfig) -> None:
    """Process-wide settings of ``runtime``: the number of CPU threads torch computes with
    (``runtime.num_threads``; unset keeps torch's default, one per core)."""
    if rc.runtime.num_threads:
        torch.set_num_threads(rc.runtime.num_threads)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA request is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"runtime.device: expected auto, cpu or cuda[:N], got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"runtime.device: {name!r} asked for but no CUDA device is available; use cpu or auto"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"runtime.device: {name!r} asked for but {torch.cuda.device_count()} CUDA device(s) are "
            f"visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return device


# ----------------------------------------------------------------------------------- datasets
def dataset_node(rc: ResolvedConfig, split: str) -> Config:
    """The ``dataset.<split>`` node, with ``dataset.root`` filled in as its ``root`` default."""
    if rc.dataset is None:
        raise ConfigError(
            f"{rc.source}: dataset: missing section (expected dataset.train / dataset.val nodes)"
        )
    if split not in rc.dataset:
        known = [s for s in SPLITS if s in rc.dataset]
        raise ConfigError(
            f"{rc.source}: dataset.{split}: missing (the config has {', '.join(known) or 'no split'})"
        )
    return rc.dataset[split]


def build_dataset(rc: ResolvedConfig, split: str, *, labels: bool = True) -> Any:
    """Build ``dataset.<split>``. ``dataset.root`` (optional) is passed to datasets that take ``root``.

    ``labels=False`` (``masklab evaluate --format-only``) builds an images-only dataset when its
    class takes ``labels`` (a config's own ``labels`` key wins); other datasets are built as written.
    """
    if rc.task == "mal":
        from masklab.models.mal.build import build_mal_dataset

        return build_mal_dataset(rc, split)
    node = dataset_node(rc, split)
    provided: dict[str, Any] = {}
    root = rc.dataset.get("root") if rc.dataset is not None else None
    wants_root = root is not None and "root" not in node
    if wants_root or (not labels and "labels" not in node):
        factory = node_factory(node, path=f"dataset.{split}", source=rc.source, registry=registries.DATASETS)
        params = _parameters(factory)
        if wants_root and "root" in params:
            provided["root"] = root
        if not labels and "labels" not in node and "labels" in params:
            provided["labels"] = False
    from masklab.data.datasets.config_key import with_config_key

    try:
        return build_node(
            node, path=f"dataset.{split}", source=rc.source, registry=registries.DATASETS, **provided
        )
    except MasklabError as exc:  # the dataset names its argument; the key says which split's entry
        raise with_config_key(exc, f"dataset.{split}") from None


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def dataset_meta(dataset: Any) -> Any:
    """The dataset's :class:`~masklab.data.meta.DatasetMeta` (``metainfo``), or None."""
    return getattr(dataset, "metainfo", None)


# -------------------------------------------------------------------------------------- model
def build_model(
    config: str | Path | Config | ResolvedConfig, meta: Any = None, overrides: Iterable[str] = ()
) -> nn.Module:
    """Build the model of a config. Values the dataset metadata determines (``num_classes``,
    attribute value counts) are derived from ``meta`` when given, and a config that restates them
    differently is a ConfigError naming both values."""
    rc = resolve(config, overrides)
    if rc.task == "mal":
        from masklab.models.mal.build import build_mal_model

        return build_mal_model(rc)
    if rc.model is None:
        raise ConfigError(f"{rc.source}: model: missing section (a {{type: ...}} node)")
    provided: dict[str, Any] = {}
    params = _parameters(node_factory(rc.model, path="model", source=rc.source, registry=registries.MODELS))
    if meta is not None:
        if "num_classes" in params:
            provided["num_classes"] = _derived_num_classes(rc, meta)
        if "class_names" in params:
            provided["class_names"] = tuple(meta.classes)
        if "dataset_meta" in params:
            provided["dataset_meta"] = meta
        if "attributes" in params:
            derived = _checked_attributes(rc, meta)
            if derived is not None:
                provided["attributes"] = derived
    if "test_topk" in params:
        provided["test_topk"] = _tied_topk(rc)
    return build_node(rc.model, path="model", source=rc.source, registry=registries.MODELS, **provided)


def _checked_attributes(rc: ResolvedConfig, meta: Any) -> Any:
    """Check ``model.attributes`` against the dataset's attributes (names, order, value counts).

    Returns the specs derived from the metadata when the config leaves them out, else None (the
    config's declaration is used as written once it agrees with the data).
    """
    from masklab.models.mask2former.attribute_spec import AttributeSpec

    declared = rc.model.get("attributes") if rc.model is not None else None
    data = [(a.name, len(a.values)) for a in getattr(meta, "attributes", ())]
    if declared is None:
        return [AttributeSpec(a.name, len(a.values), value_names=tuple(a.values)) for a in meta.attributes]
    model_side = [(d.get("name"), d.get("num_values")) if hasattr(d, "get") else (d, None) for d in declared]
    if model_side != data:

        def show(pairs: list[tuple[Any, Any]]) -> str:
            return ", ".join(f"{n}:{v}" for n, v in pairs) or "none"

        raise ConfigError(
            f"{rc.source}: model.attributes: config declares [{show(model_side)}] but the dataset "
            f"metadata has [{show(data)}] (name:num_values, in order)"
        )
    return None


def _tied_topk(rc: ResolvedConfig) -> Any:
    """``model.test_topk`` and the evaluator's ``maxDets`` are one setting: ``evaluate.max_dets``."""
    from masklab.config.build import Derived

    n = rc.evaluate.max_dets
    return Derived(n, f"evaluate.max_dets is {n} (top-k per image and COCO maxDets are one setting)")


def _derived_num_classes(rc: ResolvedConfig, meta: Any) -> Any:
    from masklab.config.build import Derived

    return Derived(meta.num_classes, f"the dataset metadata has {meta.num_classes} classes")


# ---------------------------------------------------------------------------------- evaluator
def build_evaluator(rc: ResolvedConfig, dataset: Any) -> Any:
    """The evaluator a task reports with, fed with what the dataset knows (names, ground truth)."""
    meta = dataset_meta(dataset)
    if rc.task == "semantic":
        from masklab.evaluation.semantic import IoUMetric

        return IoUMetric(
            num_classes=meta.num_classes,
            ignore_index=meta.ignore_index,
            metrics=tuple(rc.evaluate.metrics),
            class_names=tuple(meta.classes),
        )
    builder = _TASK_EVALUATORS.get(rc.task)
    if builder is None:
        raise ConfigError(f"{rc.source}: task: no evaluator for task {rc.task!r}")
    return builder(rc, dataset)


def _instance_evaluator(rc: ResolvedConfig, dataset: Any) -> Any:
    from masklab.evaluation.coco.evaluator import CocoEvaluator
    from masklab.evaluation.coco.params import max_dets_for

    meta = dataset_meta(dataset)
    return CocoEvaluator(
        gt=dataset.coco,
        iou_types=("segm",),
        max_dets=max_dets_for(rc.evaluate.max_dets),
        attribute_names=tuple(a.name for a in meta.attributes),
    )


_TASK_EVALUATORS: dict[str, Callable[[ResolvedConfig, Any], Any]] = {"instance": _instance_evaluator}


def register_task_evaluator(task: str, builder: Callable[[ResolvedConfig, Any], Any]) -> None:
    """Let a family say which evaluator its task reports with."""
    _TASK_EVALUATORS[task] = builder


# ------------------------------------------------------------------------------------ loaders
def build_val_loader(rc: ResolvedConfig, dataset: Any) -> Any:
    from masklab.data.loader import build_dataloader

    return build_dataloader(
        dataset,
        batch_size=rc.evaluate.batch_size,
        num_workers=0 if rc.train is None else min(rc.train.num_workers, 2),
        shuffle=False,
        infinite=False,
        drop_last=False,
    )


def train_loader_factory(rc: ResolvedConfig, dataset: Any) -> Callable[[int], Any]:
    """``start -> loader`` for the trainer: an infinite, seeded loader skipping ``start`` batches.

    Each sample's random transforms draw from ``sample_seed(runtime.seed, its global position)``
    (:mod:`masklab.data.loader`), so the batches after ``start`` are the uninterrupted run's with
    any ``train.num_workers``: resume is exact.
    """
    from masklab.data.loader import build_dataloader

    assert rc.train is not None

    def factory(start: int) -> Any:
        return build_dataloader(
            dataset,
            batch_size=rc.train.batch_size,
            num_workers=rc.train.num_workers,
            shuffle=True,
            seed=rc.runtime.seed,
            drop_last=True,
            infinite=True,
            start_iter=start,
            # Page-locked batches make the preprocessor's non_blocking copies asynchronous on CUDA.
            pin_memory=resolve_device(rc.runtime.device).type == "cuda",
        )

    return factory


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def effective_batch(rc: ResolvedConfig) -> int:
    assert rc.train is not None
    return rc.train.batch_size * world_size() * rc.train.accumulate_steps


def plain_config(rc: ResolvedConfig) -> dict[str, Any]:
    """The resolved config as plain data (saved in checkpoints and the work dir)."""
    return rc.to_dict()


def schedule_kwargs(rc: ResolvedConfig, iters_per_epoch: int | None = None) -> dict[str, Any]:
    """``build_scheduler`` keywords of ``train.schedule``; ``by_epoch`` milestones in iterations."""
    assert rc.train is not None
    s = asdict(rc.train.schedule)
    if s.pop("by_epoch", False):
        # Checked when resolved: by_epoch needs max_epochs, so the caller knows the epoch length.
        assert iters_per_epoch is not None, "by_epoch milestones need iters_per_epoch"
        s["milestones"] = [m * iters_per_epoch for m in s["milestones"]]
    return {"kind": s.pop("policy"), **s}


def iters_per_epoch(rc: ResolvedConfig, dataset_size: int) -> int | None:
    """Optimizer steps per pass over ``dataset_size`` samples for a run that counts epochs
    (``train.max_epochs``), else None: the run and its intervals count iterations."""
    from masklab.engine.trainer import epochs_to_iters

    t = rc.train
    assert t is not None
    if t.max_epochs is None:
        return None
    return epochs_to_iters(1, dataset_size, t.batch_size, world_size(), t.accumulate_steps)


def run_length_message(rc: ResolvedConfig, max_iters: int, per_epoch: int | None, dataset_size: int) -> str:
    """One log line saying how an epoch-counted run and its intervals map to iterations ("" for
    a run that counts iterations: there is nothing to convert)."""
    t = rc.train
    assert t is not None
    if per_epoch is None:
        return ""
    return (
        f"{t.max_epochs} epochs x {per_epoch} iterations ({dataset_size} samples // effective batch "
        f"{effective_batch(rc)}) = {max_iters} iterations; validation every {t.val_interval} epoch(s) "
        f"= {t.val_interval * per_epoch} iterations, checkpoints every {t.checkpoint_interval} epoch(s) "
        f"= {t.checkpoint_interval * per_epoch} iterations, a log line every {t.log_interval} iterations"
    )


def default_work_dir(rc: ResolvedConfig) -> Path:
    if rc.runtime.work_dir:
        return Path(rc.runtime.work_dir)
    return Path("work_dirs") / Path(rc.source).stem


# ------------------------------------------------------------------------------------ trainer
def apply_eval_settings(model: nn.Module, rc: ResolvedConfig, settings: Any = None) -> None:
    """How predictions are computed (whole/slide, crop, stride, TTA) lives outside the model config.

    Args:
        model: a model with ``set_test_mode`` (others are left alone).
        rc: the resolved config.
        settings: an ``InferenceModeConfig``; default ``rc.evaluate`` (evaluation, validation).
            The Inferencer passes :func:`masklab.inference.settings.inference_settings`.

    The default ``tta`` (scales ``[1.0]``, no flip) augments nothing: the model is given no TTA and
    predicts through its plain path (one padded forward, raw logits), as MMSeg does without ``--tta``.
    """
    setter = getattr(model, "set_test_mode", None)
    if setter is None:
        return
    s = rc.evaluate if settings is None else settings
    identity = [float(x) for x in s.tta.scales] == [1.0] and not s.tta.flip
    setter(mode=s.mode, crop_size=s.crop_size, stride=s.stride, tta=None if identity else s.tta)


def build_optimizer_and_schedule(
    rc: ResolvedConfig, model: nn.Module, max_iters: int, iters_per_epoch: int | None = None
) -> tuple[Any, Any, str]:
    """Optimizer over param groups (lr_mult/decay_mult), LR scaled to the effective batch, and the
    per-iteration schedule (``iters_per_epoch`` converts ``by_epoch`` milestones). Returns them
    with the LR-scaling message for the log."""
    from masklab.engine.optim import build_optimizer, build_param_groups, scale_lr
    from masklab.engine.schedules import build_scheduler

    assert rc.train is not None
    opt = rc.train.optim
    lr, message = scale_lr(opt.lr, opt.base_batch_size, effective_batch(rc), opt.auto_scale_lr)
    groups = build_param_groups(
        model,
        base_lr=lr,
        weight_decay=opt.weight_decay,
        paramwise={k: (r.lr_mult, r.decay_mult) for k, r in opt.paramwise.items()},
        norm_decay_mult=opt.norm_decay_mult,
        bias_decay_mult=opt.bias_decay_mult,
    )
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": opt.weight_decay}
    if opt.type == "SGD":
        kwargs["momentum"] = opt.momentum
    else:
        kwargs.update(betas=tuple(opt.betas), eps=opt.eps)
    optimizer = build_optimizer(opt.type, groups, **kwargs)
    sched = schedule_kwargs(rc, iters_per_epoch)
    kind = sched.pop("kind")
    scheduler = build_scheduler(optimizer, kind, max_iters, **sched)
    return optimizer, scheduler, message


def build_hooks(
    rc: ResolvedConfig, max_iters: int, has_val: bool, iters_per_epoch: int | None = None
) -> list[Any]:
    """The default hooks. With ``iters_per_epoch`` (a run of ``train.max_epochs``) the validation
    and checkpoint intervals count epochs and are converted here; ``log_interval`` counts
    iterations either way (MMEngine's convention)."""
    from masklab.engine.hooks.checkpoint import CheckpointHook
    from masklab.engine.hooks.ema import EMAHook
    from masklab.engine.hooks.eval import EvalHook
    from masklab.engine.hooks.logger import LoggerHook
    from masklab.engine.hooks.nonfinite import NonFiniteLossHook
    from masklab.engine.hooks.timer import TimerHook

    t = rc.train
    assert t is not None
    unit = iters_per_epoch or 1  # iterations per interval unit
    hooks: list[Any] = [
        TimerHook(),
        LoggerHook(log_interval=min(t.log_interval, max_iters)),
        CheckpointHook(interval=t.checkpoint_interval * unit, max_keep=t.max_keep_ckpts),
        NonFiniteLossHook(max_skips=t.nonfinite.max_skips),
    ]
    if has_val:
        hooks.append(EvalHook(interval=t.val_interval * unit, best_key=_best_key(rc)))
    if t.ema is not None:
        hooks.append(EMAHook(momentum=t.ema.momentum, interval=t.ema.interval, warmup=t.ema.warmup))
    return hooks


def _best_key(rc: ResolvedConfig) -> str | None:
    return {"semantic": "mIoU", "instance": "segm/AP", "mal": "mask_iou"}.get(rc.task)


def check_distributed_settings(rc: ResolvedConfig, device: torch.device) -> None:
    """The settings a run of several processes refuses, each one :class:`ConfigError` line: asked by
    every rank when it builds the trainer, and by ``train --nproc`` once before torchrun starts (so
    the error is printed once, not once per rank after torchrun's traceback)."""
    from masklab.engine.distributed import check_sync_bn

    if rc.runtime.strategy == "fsdp" and rc.train is not None and rc.train.ema is not None:
        raise ConfigError(
            f"{rc.source}: train.ema: not supported with runtime.strategy: fsdp (the average "
            "would hold parameter shards); use runtime.strategy: ddp or drop train.ema"
        )
    if rc.runtime.strategy == "fsdp" and rc.runtime.channels_last:
        # Not torch's NotImplementedError from fully_shard on every rank.
        raise ConfigError(
            f"{rc.source}: runtime.channels_last: not supported with runtime.strategy: fsdp (FSDP2 "
            "shards contiguous parameters only, and NHWC conv weights are not); set "
            "runtime.channels_last: false or use runtime.strategy: ddp"
        )
    check_sync_bn(rc.runtime.sync_bn, device)


def build_trainer(
    rc: ResolvedConfig,
    *,
    work_dir: str | Path,
    device: torch.device | None = None,
    progress: bool = True,
    with_val: bool = True,
) -> Any:
    """Assemble the whole training run of ``rc``: datasets, model, optimizer, schedule, hooks.

    The returned :class:`~masklab.engine.trainer.Trainer` has ``.model_meta`` (the dataset
    metadata), and ``.lr_message`` and ``.run_message`` (epochs to iterations; "" for a run of
    ``max_iters``) for the log. Call ``trainer.resume()`` then ``trainer.train()``.
    """
    from masklab.engine.checkpoint import load_model_weights
    from masklab.engine.distributed import get_info, wrap_model
    from masklab.engine.trainer import Trainer
    from masklab.engine.val_loop import ValLoop

    if rc.task == "mal":
        from masklab.models.mal.build import build_mal_trainer

        return build_mal_trainer(rc, work_dir=work_dir, device=device, progress=progress, with_val=with_val)
    if rc.train is None:
        raise ConfigError(
            f"{rc.source}: train: missing section; a training run needs train.optim, train.batch_size, ..."
        )
    t = rc.train
    device = device or resolve_device(rc.runtime.device)
    apply_process_settings(rc)
    torch.manual_seed(rc.runtime.seed)
    train_set = build_dataset(rc, "train")
    meta = dataset_meta(train_set)
    model = build_model(rc, meta)
    if t.load_from:
        report = load_model_weights(model, t.load_from, strict=False)
        print(report.message(t.load_from))
    apply_eval_settings(model, rc)
    place_model(model, rc, device)
    info = get_info()
    per_epoch = iters_per_epoch(rc, len(train_set))
    max_iters = t.max_iters if per_epoch is None else t.max_epochs * per_epoch
    if info.is_distributed:
        check_distributed_settings(rc, device)
        model = wrap_model(model, rc.runtime.strategy, device, sync_bn=rc.runtime.sync_bn)
    optimizer, scheduler, lr_message = build_optimizer_and_schedule(rc, model, max_iters, per_epoch)
    val_loop = None
    if with_val and rc.dataset is not None and "val" in rc.dataset:
        val_set = build_dataset(rc, "val")
        from masklab.data.split_meta import check_same_meta

        check_same_meta(train_set, val_set, rc.source)  # before any file is written
        val_loop = ValLoop(
            model, build_val_loader(rc, val_set), build_evaluator(rc, val_set), precision=rc.runtime.precision
        )
    hooks = build_hooks(rc, max_iters, val_loop is not None, per_epoch)
    if meta is not None:
        from masklab.engine.hooks.metadata import MetadataHook

        hooks.append(MetadataHook(meta.to_json()))
    trainer = Trainer(
        model,
        optimizer,
        train_loader_factory(rc, train_set),
        max_iters,
        scheduler=scheduler,
        hooks=hooks,
        work_dir=work_dir,
        precision=rc.runtime.precision,
        channels_last=rc.runtime.channels_last,
        accumulate_steps=t.accumulate_steps,
        clip_grad=t.clip_grad,
        device=device,
        val_loop=val_loop,
        seed=rc.runtime.seed,
        config=plain_config(rc),
        progress=progress,
    )
    trainer.model_meta = meta
    trainer.lr_message = lr_message
    trainer.run_message = run_length_message(rc, max_iters, per_epoch, len(train_set))
    return trainer
