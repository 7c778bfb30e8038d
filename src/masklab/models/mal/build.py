"""Objects of a ``task: mal`` run from its TAO-shaped config: dataset, model, optimiser, trainer.

:mod:`masklab.config.assemble` hands MAL configs here (``build_dataset``, ``build_model``,
``build_trainer``); the other tasks never reach this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklab.config.schema import ResolvedConfig
from masklab.data.coco.load import load_coco
from masklab.data.datasets.box_crops import BoxCropDataset
from masklab.errors import ConfigError, DataError
from masklab.models.mal.config import (
    ARCHS,
    TINY_ARCHS,
    MalEvaluateConfig,
    MalTrainConfig,
    mal_dataset_config,
    mal_model_config,
)
from masklab.models.mal.encoders import MalTinyEncoder, MalViTEncoder
from masklab.models.mal.model import MALModel
from masklab.models.mal.schedule import mal_decay, per_sample_lr

__all__ = [
    "build_mal_dataset",
    "build_mal_model",
    "build_mal_trainer",
    "image_size_mismatch",
    "mal_train_section",
    "open_box_dataset",
]


def mal_train_section(rc: ResolvedConfig) -> MalTrainConfig:
    """``rc.train``, or the TAO defaults when the config has no train section (labeling-only specs)."""
    return rc.train if isinstance(rc.train, MalTrainConfig) else MalTrainConfig()


def image_refinement_pad(rc: ResolvedConfig) -> int:
    """Pixels around each box the labeling crops must carry for ``evaluate.crf_refine_space: image``
    (half the refinement kernel), or 0 when the labels are not refined at image resolution."""
    ev = rc.evaluate
    if not isinstance(ev, MalEvaluateConfig) or ev.crf_refine_iter == 0 or ev.crf_refine_space != "image":
        return 0
    kernel = ev.crf_refine_kernel_size or mal_train_section(rc).crf_kernel_size
    return kernel // 2 * ev.crf_refine_dilation


def build_mal_dataset(rc: ResolvedConfig, split: str, *, training: bool | None = None) -> BoxCropDataset:
    """``BoxCropDataset`` of ``dataset.{split}_ann_path`` / ``{split}_img_dir`` (train or val)."""
    ds = mal_dataset_config(rc)
    if split not in ("train", "val"):
        raise ConfigError(f"{rc.source}: dataset: MAL has train_* and val_* paths, not {split!r}")
    ann, img = getattr(ds, f"{split}_ann_path"), getattr(ds, f"{split}_img_dir")
    if not ann or not img:
        raise ConfigError(
            f"{rc.source}: dataset.{split}_ann_path/{split}_img_dir: missing for the {split} split"
        )
    t = mal_train_section(rc)
    train_mode = split == "train" if training is None else training
    dataset = open_box_dataset(
        ann,
        img,
        training=train_mode,
        crop_size=ds.crop_size,
        margin_rate=(t.margin_rate[0], t.margin_rate[1]),
        test_margin_rate=(t.test_margin_rate[0], t.test_margin_rate[1]),
        min_obj_size=ds.min_obj_size,
        max_obj_size=ds.max_obj_size,
        load_mask=ds.load_mask and not train_mode,
        region_pad=0 if train_mode else image_refinement_pad(rc),
    )
    if train_mode and len(dataset) == 0:
        # Said here, with what dropped the boxes: the loader would only say "the dataset is empty".
        why = {
            "too_small": f"w or h <= 2 or area <= dataset.min_obj_size={ds.min_obj_size:g}",
            "too_large": f"area > dataset.max_obj_size={ds.max_obj_size:g}",
        }
        dropped = [
            f"{n} {reason}" + (f" ({why[reason]})" if reason in why else "")
            for reason, n in dataset.skipped.items()
            if n
        ]
        detail = f"all skipped: {', '.join(dropped)}" if dropped else "the file has no annotations"
        raise DataError(f"{ann}: no box left to train on (dataset.{split}_ann_path): {detail}")
    return dataset


def open_box_dataset(ann_path: str | Path, img_dir: str | Path, **kwargs: Any) -> BoxCropDataset:
    """``BoxCropDataset(ann_path, img_dir, **kwargs)``; wrong image sizes in the file are named first.

    A box lying outside the ``width``/``height`` its ``images[]`` entry declares is what a wrong
    size looks like (swapped most often), and the dataset would blame the box. When the dataset
    refuses the file (labeling, evaluation) or drops boxes as outside their image (training), the
    files of the images holding such boxes (read anyway, by every MAL run) are sized first, and a
    size that disagrees with the file is the one-line error instead.
    """
    try:
        dataset = BoxCropDataset(str(ann_path), str(img_dir), **kwargs)
    except DataError as exc:
        found = image_size_mismatch(ann_path, img_dir)
        if found is not None:
            raise DataError(found) from exc
        raise
    if dataset.skipped["outside_image"]:
        found = image_size_mismatch(ann_path, img_dir)
        if found is not None:
            raise DataError(found)
    return dataset


def image_size_mismatch(ann_path: str | Path, img_dir: str | Path) -> str | None:
    """The first ``images[]`` entry holding a box beyond its declared size whose file has another size.

    Returns the one-line message (``images[i] (id=..): width/height WxH but the file F is W'xH'``),
    or None. Only image headers are read; missing or unreadable files are left to the dataset's
    own errors.
    """
    from PIL import Image

    try:
        coco = load_coco(ann_path, on_bad="skip")
    except DataError:
        return None  # the dataset reports what is wrong with the file itself
    images = coco.image_by_id()
    suspects = {
        a.image_id
        for a in coco.annotations
        if a.bbox[0] + a.bbox[2] > images[a.image_id].width
        or a.bbox[1] + a.bbox[3] > images[a.image_id].height
    }
    for index, img in enumerate(coco.images):
        if img.id not in suspects:
            continue
        path = Path(img_dir) / img.file_name
        try:
            with Image.open(path) as f:
                width, height = f.size
        except (OSError, ValueError):
            continue
        if (width, height) != (img.width, img.height):
            return (
                f"{ann_path}: images[{index}] (id={img.id}): width/height {img.width}x{img.height} "
                f"but the file {path} is {width}x{height}"
            )
    return None


def _backbone(rc: ResolvedConfig) -> nn.Module:
    m = mal_model_config(rc)
    pretrained = mal_train_section(rc).pretrained_model_path
    if m.arch in TINY_ARCHS:
        if pretrained:  # the tiny encoders load no weights: the run would start from scratch unsaid
            raise ConfigError(
                f"{rc.source}: train.pretrained_model_path: {pretrained!r} cannot be loaded into "
                f"model.arch {m.arch!r} (masklab's tiny CPU encoders have no pretrained weights); "
                "drop it, or use a ViT arch"
            )
        # masklab-tiny: stride 16 like ViT/16 (the real encoder's geometry); masklab-tiny-s8 / -p4s8:
        # stride 8, so small CPU crops still give a usable feature map (64 px is 4x4 at stride 16).
        return MalTinyEncoder(channels=m.mask_head_hidden_channel, **TINY_ARCHS[m.arch])
    return MalViTEncoder(
        ARCHS.get(m.arch, m.arch),
        pretrained=pretrained,
        frozen_stages=m.frozen_stages[0],
        drop_path_rate=m.vit_dpr,
    )


def build_mal_model(rc: ResolvedConfig) -> MALModel:
    """``MALModel`` from ``model.*`` and the loss/CRF keys of ``train.*``; test flags from ``evaluate.*``."""
    m, t = mal_model_config(rc), mal_train_section(rc)
    model = MALModel(
        _backbone(rc),
        mask_head_num_convs=m.mask_head_num_convs,
        mask_head_hidden_channel=m.mask_head_hidden_channel,
        mask_head_out_channel=m.mask_head_out_channel,
        mask_scale_ratio=m.mask_scale_ratio,
        not_adjust_scale=m.not_adjust_scale,
        teacher_momentum=m.teacher_momentum,
        loss_mil_weight=t.loss_mil_weight,
        loss_crf_weight=t.loss_crf_weight,
        loss_mil_step=t.loss_mil_step,
        loss_crf_step=t.loss_crf_step,
        crf_kernel_size=t.crf_kernel_size,
        crf_zeta=t.crf_zeta,
        crf_num_iter=t.crf_num_iter,
        crf_value_low_thres=t.crf_value_low_thres,
        crf_value_high_thres=t.crf_value_high_thres,
        mask_thres=tuple(t.mask_thres),
    )
    ev = rc.evaluate
    if isinstance(ev, MalEvaluateConfig):
        net = "mixed" if ev.use_mixed_model_test else "teacher" if ev.use_teacher_test else "student"
        model.set_labeling(
            network=net,
            flip=ev.use_flip_test,
            refine_iter=ev.crf_refine_iter,
            refine_scale=ev.crf_refine_scale,
            refine_space=ev.crf_refine_space,
            refine_kernel_size=ev.crf_refine_kernel_size,
            refine_dilation=ev.crf_refine_dilation,
            precision=ev.labeling_precision,
        )
    return model


def _iters_per_epoch(t: MalTrainConfig, dataset_size: int, world: int) -> int:
    return max(1, dataset_size // (t.batch_size * world * t.accum_grad_batches))


def _loader_factory(dataset: BoxCropDataset, t: MalTrainConfig, num_workers: int) -> Any:
    """``start -> loader``: infinite, seeded by ``train.seed``, skipping the batches already consumed."""
    from masklab.data.loader import build_dataloader

    def factory(start: int) -> Any:
        return build_dataloader(
            dataset,
            batch_size=t.batch_size,
            num_workers=num_workers,
            shuffle=True,
            seed=max(t.seed, 0),
            drop_last=True,
            infinite=True,
            start_iter=start,
        )

    return factory


def build_mal_trainer(
    rc: ResolvedConfig,
    *,
    work_dir: str | Path,
    device: torch.device | None = None,
    progress: bool = True,
    with_val: bool = True,
) -> Any:
    """The MAL training run: AdamW at ``lr`` x total batch, warmup + half-cosine, epoch intervals.

    Auto-resume (TAO): ``train.resume_training_checkpoint_path``, else the work dir's latest
    checkpoint when there is one.
    """
    from masklab.config.assemble import (
        apply_process_settings,
        build_evaluator,
        build_val_loader,
        resolve_device,
    )
    from masklab.engine.distributed import get_info
    from masklab.engine.hooks.checkpoint import CheckpointHook
    from masklab.engine.hooks.eval import EvalHook
    from masklab.engine.hooks.logger import LoggerHook
    from masklab.engine.hooks.nonfinite import NonFiniteLossHook
    from masklab.engine.hooks.timer import TimerHook
    from masklab.engine.optim import build_optimizer
    from masklab.engine.schedules import build_scheduler
    from masklab.engine.trainer import Trainer
    from masklab.engine.val_loop import ValLoop

    t = rc.train
    if not isinstance(t, MalTrainConfig):
        raise ConfigError(
            f"{rc.source}: train: missing section; a MAL training run needs train.num_epochs, train.lr, ..."
        )
    device = device or resolve_device(rc.runtime.device)
    apply_process_settings(rc)
    seed = t.seed if t.seed >= 0 else None
    torch.manual_seed(t.seed if seed is not None else rc.runtime.seed)
    train_set = build_mal_dataset(rc, "train")
    model = build_mal_model(rc).to(device)
    world = get_info().world_size
    per_epoch = _iters_per_epoch(t, len(train_set), world)
    max_iters = t.max_iters or t.num_epochs * per_epoch
    unit = per_epoch if t.checkpoint_interval_unit == "epoch" else 1
    lr = per_sample_lr(t.lr, t.batch_size * world)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(
        "AdamW", params, lr=lr, weight_decay=t.wd, betas=tuple(t.optim_betas), eps=t.optim_eps
    )
    warmup = min(round(t.warmup_epochs * per_epoch), max_iters)
    scheduler = build_scheduler(optimizer, mal_decay(warmup, max_iters, t.min_lr_rate, t.num_wave), max_iters)
    hooks: list[Any] = [
        TimerHook(),
        LoggerHook(log_interval=min(t.log_interval, max_iters)),
        CheckpointHook(interval=max(1, t.checkpoint_interval * unit), max_keep=t.max_keep_ckpts),
        NonFiniteLossHook(max_skips=t.nonfinite.max_skips),
    ]
    ds = mal_dataset_config(rc)
    train_loader = _loader_factory(train_set, t, ds.num_workers_per_gpu)
    val_loop = None
    if with_val and ds.val_ann_path and ds.val_img_dir:
        val_set = build_mal_dataset(rc, "val")
        val_loop = ValLoop(model, build_val_loader(rc, val_set), build_evaluator(rc, val_set))
        hooks.append(EvalHook(interval=max(1, t.validation_interval * unit), best_key="mask_iou"))
    trainer = Trainer(
        model,
        optimizer,
        train_loader,
        max_iters,
        scheduler=scheduler,
        hooks=hooks,
        work_dir=work_dir,
        precision="fp16" if t.use_amp and device.type == "cuda" else "fp32",
        accumulate_steps=t.accum_grad_batches,
        clip_grad=t.clip_grad,
        device=device,
        val_loop=val_loop,
        seed=seed,
        config=rc.to_dict(),
        progress=progress,
    )
    trainer.model_meta = None
    trainer.lr_message = f"MAL lr {t.lr:g} per sample x total batch {t.batch_size * world} = {lr:g}; {max_iters} iterations, warmup {warmup}"
    source = t.resume_training_checkpoint_path
    used = trainer.resume(source)  # None -> the work dir's latest checkpoint, if any
    if used is not None and trainer.iter >= max_iters:
        # As TAO (Lightning) does with a checkpoint at or past max_epochs: nothing to train, exit 0,
        # but said, so that a shorter spec on an old work dir does not pass for a finished run.
        asked = f"train.num_epochs={t.num_epochs} x {per_epoch} iterations per epoch"
        if t.max_iters:
            asked = f"train.max_iters={t.max_iters}"
        if get_info().rank == 0:  # print, not trainer.log: the console would wrap the line
            print(
                f"{used}: checkpoint already at iteration {trainer.iter} >= the {max_iters} the spec asks "
                f"for ({asked}); nothing trained (raise train.num_epochs, or use a new runtime.work_dir)"
            )
    return trainer
