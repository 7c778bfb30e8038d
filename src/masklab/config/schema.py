"""Typed top-level sections: ``runtime``, ``train``, ``evaluate``, ``inference``, ``export``.

Each section is a dataclass bound with the same machinery as a ``{type: ...}`` node (a section is
a node without ``type``), so ``configs/x.yaml: train.optim.lrr: unknown key for OptimConfig; did
you mean 'lr'?`` comes out the same way. ``model`` and ``dataset`` are component nodes built later
by :func:`masklab.config.build.build_node`; they are passed through untouched.

A family (``task: semantic | instance | mal``) may extend a section by subclassing its dataclass
and calling :func:`register_schema`, e.g. MAL adds ``train.lr`` and ``train.crf_num_iter``.
Sections are keyword-only dataclasses so a subclass may add required fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

from masklab.config.build import build_dataclass
from masklab.config.nodes import Config
from masklab.errors import ConfigError

__all__ = [
    "EMAConfig",
    "EvaluateConfig",
    "ExportConfig",
    "InferenceConfig",
    "NonFiniteConfig",
    "OptimConfig",
    "ParamRule",
    "ResolvedConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TTAConfig",
    "TrainConfig",
    "register_schema",
    "resolve_sections",
    "schema_for",
]


@dataclass(kw_only=True)
class RuntimeConfig:
    """Where and how a run executes."""

    seed: int = 0
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    sync_bn: bool = False
    deterministic: bool = False
    work_dir: str | None = None
    num_threads: int | None = None
    find_unused_parameters: bool = False
    # Train in NHWC memory layout (weights and input images): CNN training steps on CPU ran
    # 12-15 % faster (FPN-RegNetX-200MF, batch 8, 128 px); outputs are the same up to float order.
    channels_last: bool = False


@dataclass(kw_only=True)
class ParamRule:
    """LR and weight-decay multipliers for parameters whose name matches a pattern."""

    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer (MMSeg's ``optim_wrapper.optimizer`` + ``paramwise_cfg``).

    ``lr`` is the LR at ``base_batch_size`` (total over processes and accumulation); when the
    effective batch differs, ``auto_scale_lr`` scales it linearly, warns, or leaves it alone.
    """

    type: Literal["SGD", "AdamW", "Adam"] = "SGD"
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    base_batch_size: int | None = None
    auto_scale_lr: Literal["scale", "warn", "off"] = "scale"
    paramwise: dict[str, ParamRule] = field(default_factory=dict)
    norm_decay_mult: float | None = None
    bias_decay_mult: float | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(kw_only=True)
class ScheduleConfig:
    """LR schedule: optional linear warm-up, then ``policy`` (MMSeg's ``param_scheduler``)."""

    policy: Literal["poly", "cosine", "step", "constant"] = "poly"
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    power: float = 0.9
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    by_epoch: bool = False


@dataclass(kw_only=True)
class EMAConfig:
    """Exponential moving average of the weights: ``momentum`` is the weight of the current
    parameters per update (MMEngine's convention; 0.0002 = a decay of 0.9998)."""

    momentum: float = 0.0002
    interval: int = 1
    warmup: int = 0


@dataclass(kw_only=True)
class NonFiniteConfig:
    """What to do with a non-finite loss: skip up to ``max_skips`` steps, then stop."""

    max_skips: int = 0


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop. Exactly one of ``max_iters`` and ``max_epochs``; intervals count in the
    same unit. ``batch_size`` is per process."""

    max_iters: int | None = None
    max_epochs: int | None = None
    batch_size: int
    num_workers: int = 2
    val_interval: int
    checkpoint_interval: int
    log_interval: int = 50
    max_keep_ckpts: int = 3
    accumulate_steps: int = 1
    clip_grad: float | None = None
    optim: OptimConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig | None = None
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    load_from: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if (self.max_iters is None) == (self.max_epochs is None):
            got = "both" if self.max_iters is not None else "neither"
            raise ValueError(f"set exactly one of max_iters and max_epochs (got {got})")
        for name in ("max_iters", "max_epochs", "batch_size", "val_interval", "checkpoint_interval",
                     "log_interval", "accumulate_steps"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass(kw_only=True)
class TTAConfig:
    """Test-time augmentation: the mean of predictions over ``scales`` (and their flips)."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False


@dataclass(kw_only=True)
class InferenceModeConfig:
    """How predictions are computed: whole image or sliding window, plus TTA (MMSeg ``test_cfg``)."""

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tta: TTAConfig = field(default_factory=TTAConfig)
    max_dets: int = 100
    batch_size: int = 1
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_dets", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ValueError("mode 'slide' needs crop_size and stride, both [height, width]")


@dataclass(kw_only=True)
class EvaluateConfig(InferenceModeConfig):
    """Evaluation: inference settings plus the metrics to compute."""

    metrics: list[str] = field(default_factory=lambda: ["mIoU"])


@dataclass(kw_only=True)
class InferenceConfig(InferenceModeConfig):
    """Inference on files: inference settings plus what the writers draw and where."""

    out_dir: str | None = None
    opacity: float = 0.5
    score_threshold: float = 0.5  # display threshold for instances; metrics never threshold


@dataclass(kw_only=True)
class ExportConfig:
    """Model export."""

    format: Literal["onnx", "safetensors"] = "onnx"
    opset: int = 17
    dynamic: bool = True
    input_size: list[int] = field(default_factory=lambda: [512, 512])

    def __post_init__(self) -> None:
        if len(self.input_size) != 2:
            raise ValueError(f"input_size must be [height, width], got {self.input_size}")


BASE_SECTIONS: dict[str, type] = {
    "runtime": RuntimeConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "inference": InferenceConfig,
    "export": ExportConfig,
}
PASSTHROUGH = ("model", "dataset")  # component nodes, bound later by build_node
_SCHEMAS: dict[str, dict[str, type]] = {task: dict(BASE_SECTIONS) for task in ("semantic", "instance", "mal")}


# Families whose schema module registers their sections; imported before a config of that task
# is resolved, so resolving never depends on whether ``registries.populate()`` already ran.
_FAMILY_MODULES: dict[str, str] = {"mal": "masklab.models.mal.config"}


def register_schema(task: str, **section_classes: type) -> None:
    """Make ``task`` validate sections with the given dataclasses (others keep their defaults).

    A class replacing a standard section must subclass it, so the engine can rely on its fields;
    a new section name adds a family-specific section.
    """
    table = _SCHEMAS.setdefault(task, dict(BASE_SECTIONS))
    for name, cls in section_classes.items():
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"schema for {task}.{name} must be a dataclass, got {cls!r}")
        base = BASE_SECTIONS.get(name)
        if base is not None and not issubclass(cls, base):
            raise TypeError(f"schema for {task}.{name} must subclass {base.__name__}, got {cls.__name__}")
        if name in PASSTHROUGH or name == "task":
            raise TypeError(f"section {name!r} is not validated by a schema")
        table[name] = cls


def schema_for(task: str) -> dict[str, type]:
    """The section dataclasses ``task`` validates with."""
    return dict(_SCHEMAS[task])


@dataclass
class ResolvedConfig:
    """A loaded config with its typed sections.

    Attributes:
        task: the family (``semantic``, ``instance``, ``mal``).
        runtime, evaluate, inference, export: typed sections (defaults where absent).
        train: typed training section, ``None`` when the config has none (inference-only configs).
        model, dataset: raw component nodes for :func:`masklab.config.build.build_node`.
        extra: family-specific sections added by :func:`register_schema`.
        source: the config file.
        config: the loaded :class:`Config` (for provenance in later errors).
    """

    task: str
    runtime: RuntimeConfig
    train: TrainConfig | None
    evaluate: EvaluateConfig
    inference: InferenceConfig
    export: ExportConfig
    model: Config | None
    dataset: Config | None
    source: str
    config: Config
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (schema defaults filled in), in config order, for dumping as YAML."""
        out: dict[str, Any] = {"task": self.task}
        for name in ("runtime", "train", "evaluate", "inference", "export", *self.extra):
            value = self.extra[name] if name in self.extra else getattr(self, name)
            if value is not None:
                out[name] = dataclasses.asdict(value)
        for name in PASSTHROUGH:
            node = getattr(self, name)
            if node is not None:
                out[name] = node.to_dict()
        return out


def resolve_sections(cfg: Config) -> ResolvedConfig:
    """Validate the top-level sections of ``cfg`` against the schema of its ``task``.

    Raises:
        ConfigError: an unknown task or top-level key, or any bad key in a section (all of a
            section's problems in one line).
    """
    task = cfg.get("task", "semantic")
    if isinstance(task, str) and task in _FAMILY_MODULES:
        importlib.import_module(_FAMILY_MODULES[task])
    if task not in _SCHEMAS:
        close = difflib.get_close_matches(str(task), list(_SCHEMAS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{cfg.source('task')}: task: unknown task {task!r}{hint} (known: {', '.join(_SCHEMAS)})"
        )
    schema = _SCHEMAS[task]
    known = ["task", *schema, *PASSTHROUGH]
    unknown = [k for k in cfg if k not in known]
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f" (sections: {', '.join(known)})"
            parts.append(f"{cfg.source(str(key))}: {key}: unknown top-level key{hint}")
        raise ConfigError("; ".join(parts))
    sections: dict[str, Any] = {}
    for name, cls in schema.items():
        if name not in cfg or cfg[name] is None:
            sections[name] = None if name == "train" or name not in BASE_SECTIONS else cls()
            continue
        sections[name] = build_dataclass(cls, cfg[name], path=name, source=cfg.source(name))
    extra = {k: v for k, v in sections.items() if k not in BASE_SECTIONS and v is not None}
    return ResolvedConfig(
        task=task,
        runtime=sections["runtime"],
        train=sections["train"],
        evaluate=sections["evaluate"],
        inference=sections["inference"],
        export=sections["export"],
        model=cfg["model"] if isinstance(cfg.get("model"), Config) else None,
        dataset=cfg["dataset"] if isinstance(cfg.get("dataset"), Config) else None,
        source=cfg.filename,
        config=cfg,
        extra=extra,
    )
