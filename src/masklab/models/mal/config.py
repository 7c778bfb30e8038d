"""The ``task: mal`` config family: TAO ``mal`` spec sections, key for key, and their binding.

A TAO user's spec reads the same in masklab::

    task: mal
    dataset: {type: coco, train_ann_path: ..., train_img_dir: ..., crop_size: 512, ...}
    model: {arch: vit-mae-base/16, mask_head_num_convs: 4, teacher_momentum: 0.996, ...}
    train: {num_epochs: 10, batch_size: 3, lr: 1.5e-6, crf_num_iter: 100, ...}
    evaluate: {checkpoint: ..., use_teacher_test: false, ...}
    inference: {ann_path: ..., img_dir: ..., label_dump_path: ...}

Decision: ``dataset`` and ``model`` keep TAO's shape (no masklab ``{type: Name}`` node; TAO's
``dataset.type`` is the format, ``coco`` only). They are bound to :class:`MalDatasetConfig` and
:class:`MalModelConfig` with the same machinery as every section (one line naming the dotted key
and the nearest valid name), when the config is resolved through :func:`masklab.config.assemble.resolve`;
:func:`build_mal_dataset` / :func:`build_mal_model` turn them into a ``BoxCropDataset`` and a
``MALModel``. ``train``, ``evaluate`` and ``inference`` subclass the standard sections and fill the
engine's own fields (``max_epochs``, ``optim``, ...) from the TAO keys, which are the ones to write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from masklab.config.assemble import register_task_evaluator
from masklab.config.build import build_dataclass
from masklab.config.schema import (
    EvaluateConfig,
    InferenceConfig,
    OptimConfig,
    ResolvedConfig,
    ScheduleConfig,
    TrainConfig,
    TTAConfig,
    register_schema,
)
from masklab.config.suggest import did_you_mean
from masklab.errors import ConfigError

__all__ = [
    "MalDatasetConfig",
    "MalEvaluateConfig",
    "MalInferenceConfig",
    "MalModelConfig",
    "MalTrainConfig",
    "check_mal_nodes",
    "mal_dataset_config",
    "mal_model_config",
]

# TAO arch names -> timm names; "masklab-tiny" is masklab's CPU test encoder; others pass to timm.
ARCHS: dict[str, str] = {
    "vit-deit-tiny/16": "deit_tiny_patch16_224",
    "vit-deit-small/16": "deit_small_patch16_224",
    "vit-mae-base/16": "vit_base_patch16_224.mae",
    "vit-mae-large/16": "vit_large_patch16_224.mae",
    "vit-mae-huge/14": "vit_huge_patch14_224.mae",
}
TINY_ARCH = "masklab-tiny"
# masklab's tiny CPU encoders -> MalTinyEncoder arguments: output stride 16 (ViT/16 geometry) or 8
# (twice the feature resolution: a 128 px crop gives a 16x16 map and 32x32 logits at crop/4);
# "-p4s8": stride 8 through a 4x4 stride-4 patch stem (fewer multiply-adds: faster labeling);
# "-p4s4": the patch stem and one 3x3 conv, stride 4, for small crops (80-96 px give a 20-24 px map).
TINY_ARCHS: dict[str, dict[str, Any]] = {
    TINY_ARCH: {"num_layers": 4},
    "masklab-tiny-s8": {"num_layers": 3},
    "masklab-tiny-p4s8": {"num_layers": 3, "patch_stem": True},
    "masklab-tiny-p4s4": {"num_layers": 2, "patch_stem": True},
}


@dataclass(kw_only=True)
class MalDatasetConfig:
    """TAO ``dataset``: COCO files of boxes (val/GT masks for evaluation)."""

    type: Literal["coco"] = "coco"
    train_ann_path: str | None = None
    train_img_dir: str | None = None
    val_ann_path: str | None = None
    val_img_dir: str | None = None
    crop_size: int = 512
    load_mask: bool = True
    min_obj_size: float = 2048
    max_obj_size: float = 1e10
    num_workers_per_gpu: int = 2


@dataclass(kw_only=True)
class MalModelConfig:
    """TAO ``model``. ``arch``: a TAO name, a timm ViT name, or ``masklab-tiny`` / ``masklab-tiny-s8`` (CPU, stride 16 / 8)."""

    arch: str = "vit-mae-base/16"
    frozen_stages: list[int] = field(default_factory=lambda: [-1])
    mask_head_num_convs: int = 4
    mask_head_hidden_channel: int = 256
    mask_head_out_channel: int = 256
    teacher_momentum: float = 0.996
    not_adjust_scale: bool = False
    mask_scale_ratio_pre: int = 1
    mask_scale_ratio: float = 2.0
    vit_dpr: float = 0.0

    def __post_init__(self) -> None:
        if self.mask_scale_ratio_pre != 1:
            raise ValueError("mask_scale_ratio_pre: only 1 is implemented (the reference default)")
        if len(self.frozen_stages) != 1:
            raise ValueError(f"frozen_stages: expected one value, e.g. [-1], got {self.frozen_stages}")


@dataclass(kw_only=True)
class CudnnConfig:
    """TAO ``train.cudnn``."""

    benchmark: bool = False
    deterministic: bool = True


# Engine fields the TAO keys fill; writing them directly in a MAL spec is an error.
_DERIVED = {
    "optim": "lr/wd/optim_betas/optim_eps",
    "max_epochs": "num_epochs",
    "val_interval": "validation_interval",
    "accumulate_steps": "accum_grad_batches",
    "load_from": "pretrained_model_path",
}


@dataclass(kw_only=True)
class MalTrainConfig(TrainConfig):
    """TAO ``train`` for MAL. ``lr`` is per sample (x total batch); intervals count in
    ``checkpoint_interval_unit`` (epochs by default). ``max_iters`` (masklab) overrides ``num_epochs``."""

    # engine fields, filled from the TAO keys below
    val_interval: int = 1
    optim: OptimConfig | None = None  # type: ignore[assignment]
    # TAO keys
    num_gpus: int = 1
    gpu_ids: list[int] = field(default_factory=lambda: [0])
    num_nodes: int = 1
    seed: int = 1234
    cudnn: CudnnConfig = field(default_factory=CudnnConfig)
    num_epochs: int = 10
    checkpoint_interval: int = 1
    checkpoint_interval_unit: Literal["epoch", "step"] = "epoch"
    validation_interval: int = 1
    resume_training_checkpoint_path: str | None = None
    results_dir: str | None = None
    batch_size: int = 3
    accum_grad_batches: int = 1
    use_amp: bool = False
    pretrained_model_path: str | None = None
    optim_type: Literal["adamw"] = "adamw"
    optim_momentum: float = 0.9  # unused by AdamW, kept so TAO specs load
    lr: float = 1.5e-6
    min_lr_rate: float = 0.2
    num_wave: float = 1.0
    wd: float = 5e-4
    optim_eps: float = 1e-8
    optim_betas: list[float] = field(default_factory=lambda: [0.9, 0.9])
    warmup_epochs: float = 1.0
    margin_rate: list[float] = field(default_factory=lambda: [0.0, 1.2])
    test_margin_rate: list[float] = field(default_factory=lambda: [0.6, 0.6])
    mask_thres: list[float] = field(default_factory=lambda: [0.1])
    loss_mil_weight: float = 4.0
    loss_crf_weight: float = 0.5
    crf_zeta: float = 0.1
    crf_kernel_size: int = 3
    crf_num_iter: int = 100
    loss_crf_step: int = 4000
    loss_mil_step: int = 1000
    crf_size_ratio: int = 1
    crf_value_high_thres: float = 0.9
    crf_value_low_thres: float = 0.1

    def __post_init__(self) -> None:
        for name, tao in _DERIVED.items():
            default = 1 if name in ("val_interval", "accumulate_steps") else None
            if getattr(self, name) != default:
                raise ValueError(f"{name}: a MAL spec sets this through the TAO key(s) {tao}")
        if self.num_gpus != 1 or self.num_nodes != 1:
            raise ValueError(
                "num_gpus/num_nodes: one process per run here; launch with masklab train --nproc N"
            )
        # Engine settings a MAL run has no use for: refused rather than silently ignored.
        if self.schedule != ScheduleConfig():
            raise ValueError(
                "schedule: a MAL spec sets the LR schedule through warmup_epochs/min_lr_rate/num_wave"
            )
        if self.ema is not None:
            raise ValueError(
                "ema: not applied to a MAL run; its weight average is the teacher "
                "(model.teacher_momentum; label with it through evaluate.use_teacher_test)"
            )
        if self.results_dir is not None:
            raise ValueError(
                f"results_dir: {self.results_dir!r} is not used here; set the output folder with "
                "runtime.work_dir (or masklab train --work-dir)"
            )
        if len(self.optim_betas) != 2 or len(self.margin_rate) != 2 or len(self.test_margin_rate) != 2:
            raise ValueError("optim_betas, margin_rate and test_margin_rate take two values each")
        for key in ("margin_rate", "test_margin_rate"):
            low, high = getattr(self, key)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{key}: expected [low, high] with 0 <= low <= high, got {getattr(self, key)}"
                )
        if len(self.mask_thres) not in (1, 3):
            raise ValueError(f"mask_thres: expected 1 or 3 values, got {self.mask_thres}")
        if self.crf_size_ratio != 1:
            raise ValueError("crf_size_ratio: only 1 is implemented (the CRF runs at the logits' size)")
        if self.lr <= 0 or self.warmup_epochs < 0:
            raise ValueError(f"lr must be > 0 and warmup_epochs >= 0, got {self.lr}, {self.warmup_epochs}")
        if self.max_iters is None:
            self.max_epochs = self.num_epochs
        self.val_interval = self.validation_interval
        self.accumulate_steps = self.accum_grad_batches
        self.load_from = self.pretrained_model_path
        # The optimiser LR is lr x total batch (set when the run is built); here lr is per sample.
        self.optim = OptimConfig(
            type="AdamW",
            lr=self.lr,
            weight_decay=self.wd,
            betas=(self.optim_betas[0], self.optim_betas[1]),
            eps=self.optim_eps,
            auto_scale_lr="off",
        )
        super().__post_init__()
        self.load_from = None  # the encoder loads pretrained_model_path itself (MAE key remap)


@dataclass(kw_only=True)
class MalEvaluateConfig(EvaluateConfig):
    """TAO ``evaluate``: which network labels (student, teacher, their mean) and flip TTA."""

    batch_size: int = 3
    num_gpus: int = 1
    gpu_ids: list[int] = field(default_factory=lambda: [0])
    use_mixed_model_test: bool = False
    use_teacher_test: bool = False
    use_flip_test: bool = False
    # masklab additions (not in TAO's spec): mean-field colour refinement of the labels with the
    # training CRF's zeta and clamps (docs/mal.md). crf_refine_space crop: on the crop's probability
    # map upsampled crf_refine_scale times against the resized crop; image: on the probabilities
    # pasted back to the image, against the image's own pixels around each box (the box grown by
    # half the kernel, held at background). crf_refine_kernel_size: null = train.crf_kernel_size;
    # crf_refine_dilation (image space): the spacing of the kernel's taps.
    crf_refine_iter: int = 0
    crf_refine_scale: int = 2
    crf_refine_space: str = "crop"
    crf_refine_kernel_size: int | None = None
    crf_refine_dilation: int = 1
    # masklab addition: the labeling network's precision (the forward only; crops, paste-back and
    # refinement stay fp32). bf16 runs the convolutions on a CPU's AMX / AVX512-BF16 units (or a
    # CUDA GPU): ~2-3x faster forward on CPU, probabilities within ~0.01 of fp32 (docs/mal.md);
    # emulated (slower than fp32) on CPUs without them. auto: bf16 where the device has it natively.
    labeling_precision: str = "fp32"
    comp_clustering: bool = False
    metrics: list[str] = field(default_factory=lambda: ["mask_iou", "segm_ap"])

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unused_inference_mode(self)
        if self.comp_clustering:
            raise ValueError("comp_clustering: the clustering score is not implemented")
        if self.crf_refine_iter < 0:
            raise ValueError(f"crf_refine_iter: expected >= 0 iterations, got {self.crf_refine_iter}")
        if self.crf_refine_scale < 1:
            raise ValueError(
                f"crf_refine_scale: expected an upsampling factor >= 1, got {self.crf_refine_scale}"
            )
        if self.crf_refine_space not in ("crop", "image"):
            raise ValueError(f"crf_refine_space: expected crop or image, got {self.crf_refine_space!r}")
        k = self.crf_refine_kernel_size
        if k is not None and (k < 1 or k % 2 == 0):
            raise ValueError(f"crf_refine_kernel_size: expected an odd size >= 1 (or null), got {k}")
        if self.crf_refine_dilation < 1:
            raise ValueError(f"crf_refine_dilation: expected >= 1, got {self.crf_refine_dilation}")
        if self.labeling_precision not in ("fp32", "bf16", "auto"):
            raise ValueError(
                f"labeling_precision: expected fp32, bf16 or auto, got {self.labeling_precision!r}"
            )
        if self.crf_refine_space == "image" and self.crf_refine_scale != 2:
            raise ValueError(
                "crf_refine_scale: only the crop-space refinement upsamples (crf_refine_space: crop); "
                f"the image-space one works at the image's resolution, got {self.crf_refine_scale}"
            )
        if self.crf_refine_dilation > 1 and self.crf_refine_space != "image":
            raise ValueError(
                "crf_refine_dilation: only the image-space refinement (crf_refine_space: image) dilates"
            )


@dataclass(kw_only=True)
class MalInferenceConfig(InferenceConfig):
    """TAO ``inference``: the COCO file of boxes to label and where the labels go."""

    batch_size: int = 3
    ann_path: str | None = None
    img_dir: str | None = None
    label_dump_path: str | None = None
    load_mask: bool = False
    num_gpus: int = 1
    gpu_ids: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unused_inference_mode(self)


def _check_unused_inference_mode(section: EvaluateConfig | InferenceConfig) -> None:
    """Refuse the whole-image inference keys (sliding window, multi-scale / flip TTA) in a MAL spec:
    MAL labels box crops of ``dataset.crop_size``, and its flip TTA is ``evaluate.use_flip_test``."""
    if section.mode != "whole" or section.crop_size is not None or section.stride is not None:
        raise ValueError(
            "mode/crop_size/stride: sliding-window inference does not apply to MAL, which labels box "
            "crops of dataset.crop_size pixels"
        )
    if section.tta != TTAConfig():
        raise ValueError("tta: not applied to MAL labeling; flip TTA is evaluate.use_flip_test")


def _mal_evaluator(rc: ResolvedConfig, dataset: Any) -> Any:
    from masklab.evaluation.coco.params import max_dets_for
    from masklab.models.mal.evaluator import MalEvaluator

    return MalEvaluator(str(dataset.ann_path), max_dets=max_dets_for(rc.evaluate.max_dets))


register_schema("mal", train=MalTrainConfig, evaluate=MalEvaluateConfig, inference=MalInferenceConfig)
register_task_evaluator("mal", _mal_evaluator)


def _bind(rc: ResolvedConfig, name: str, cls: type) -> Any:
    node = getattr(rc, name)
    if node is None:
        return cls()
    return build_dataclass(cls, node, path=name, source=rc.config.source(name))


def mal_dataset_config(rc: ResolvedConfig) -> MalDatasetConfig:
    """The bound TAO ``dataset`` section of a MAL config."""
    return _bind(rc, "dataset", MalDatasetConfig)


def mal_model_config(rc: ResolvedConfig) -> MalModelConfig:
    """The bound TAO ``model`` section of a MAL config."""
    return _bind(rc, "model", MalModelConfig)


def check_mal_nodes(rc: ResolvedConfig) -> None:
    """Validate the TAO-shaped ``dataset`` and ``model`` sections (one ConfigError line each)."""
    mal_dataset_config(rc)
    model = mal_model_config(rc)
    # A name with "/" is a TAO name and "masklab-..." one of the tiny encoders; anything else goes to timm.
    known = model.arch in TINY_ARCHS or model.arch in ARCHS
    if not known and ("/" in model.arch or model.arch.startswith("masklab-")):
        raise ConfigError(
            f"{rc.config.source('model')}: model.arch: unknown {model.arch!r} (TAO names: {', '.join(ARCHS)}, "
            f"{', '.join(TINY_ARCHS)}, or a timm ViT name)" + did_you_mean(model.arch, [*ARCHS, *TINY_ARCHS])
        )
