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
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from masklab.config.build import build_dataclass
from masklab.config.nodes import Config
from masklab.config.suggest import did_you_mean
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
    "Problems",
    "collect_sections",
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

    def __post_init__(self) -> None:
        # A negative multiplier is a negative LR / decay: the optimizer would climb the loss.
        for name in ("lr_mult", "decay_mult"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name}: expected a multiplier >= 0 (0 freezes / drops decay), got {value}")


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
        # The ranges torch's optimizers check when built (there they end a run in a traceback on
        # every rank), checked here when the config is resolved; negative multipliers too.
        if self.lr <= 0:
            raise ValueError(f"lr: expected a learning rate > 0, got {self.lr}")
        for name in ("weight_decay", "momentum", "eps", "norm_decay_mult", "bias_decay_mult"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: expected >= 0, got {value}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected two coefficients in [0, 1), got {list(self.betas)}")
        if self.base_batch_size is not None and self.base_batch_size < 1:
            raise ValueError(f"base_batch_size: expected >= 1 or null, got {self.base_batch_size}")


@dataclass(kw_only=True)
class ScheduleConfig:
    """LR schedule: optional linear warm-up, then ``policy`` (MMSeg's ``param_scheduler``); the
    formula is in :mod:`masklab.engine.schedules`. The LR is set every iteration.

    ``warmup_iters`` counts iterations. ``milestones`` count iterations, or epochs with
    ``by_epoch: true`` (which needs ``train.max_epochs`` and the ``step`` policy: the LR drops at
    the first iteration of each milestone epoch, as MMEngine's ``MultiStepLR(by_epoch=True)``).
    ``decay_after_warmup: true`` starts the poly / cosine decay at the end of the warm-up (MMSeg
    1.x's ``[LinearLR(end=W), PolyLR(begin=W)]``); the default decays over the whole run from
    iteration 0 under the warm-up factor (MMSeg 0.x / mmcv's ``PolyLrUpdaterHook``).
    """

    policy: Literal["poly", "cosine", "step", "constant"] = "poly"
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    power: float = 0.9
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    by_epoch: bool = False
    decay_after_warmup: bool = False

    def __post_init__(self) -> None:
        if self.warmup_iters < 0:
            raise ValueError(f"warmup_iters: expected >= 0 (0: no warm-up), got {self.warmup_iters}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio: expected a factor in [0, 1], got {self.warmup_ratio}")
        # power <= 0 makes poly a rising LR that divides by zero at the last iteration.
        if self.power <= 0:
            raise ValueError(f"power: expected > 0, got {self.power}")
        if self.min_lr < 0:
            raise ValueError(f"min_lr: expected >= 0, got {self.min_lr}")
        if self.gamma <= 0:
            raise ValueError(f"gamma: expected a factor > 0, got {self.gamma}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones: expected values >= 1, got {self.milestones}")
        if self.policy == "step" and not self.milestones:
            raise ValueError("the step policy needs at least one milestone (got milestones [])")
        if self.by_epoch and self.policy != "step":
            raise ValueError(
                f"by_epoch: counts the step policy's milestones in epochs, and policy {self.policy!r} has "
                "none (it sets the LR every iteration over the whole run): drop by_epoch"
            )
        if self.decay_after_warmup and self.policy not in ("poly", "cosine"):
            raise ValueError(
                f"decay_after_warmup: applies to the poly and cosine policies, got policy {self.policy!r}"
            )


@dataclass(kw_only=True)
class EMAConfig:
    """Exponential moving average of the weights: ``momentum`` is the weight of the current
    parameters per update (MMEngine's convention; 0.0002 = a decay of 0.9998)."""

    momentum: float = 0.0002
    interval: int = 1
    warmup: int = 0

    def __post_init__(self) -> None:
        # The same rules as EMAHook's, checked when the config is resolved (config show, doctor).
        if not 0.0 < self.momentum <= 0.5:
            raise ValueError(
                "momentum: expected 0 < momentum <= 0.5, the weight of the current parameters per update "
                f"(MMEngine's convention; for a decay d write 1 - d), got {self.momentum}"
            )
        if self.interval < 1:
            raise ValueError(f"interval: expected >= 1, got {self.interval}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0 (0: none), got {self.warmup}")


@dataclass(kw_only=True)
class NonFiniteConfig:
    """What to do with a non-finite loss: skip up to ``max_skips`` steps, then stop."""

    max_skips: int = 0


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop. Exactly one of ``max_iters`` and ``max_epochs``; ``val_interval`` and
    ``checkpoint_interval`` count in the same unit (epochs with ``max_epochs``, as MMEngine's
    ``EpochBasedTrainLoop`` and ``CheckpointHook(by_epoch=True)``), ``log_interval`` always counts
    iterations (as MMEngine's ``LoggerHook``). ``batch_size`` is per process."""

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
                raise ValueError(f"{name}: expected >= 1, got {value}")
        if self.schedule.by_epoch and self.max_epochs is None:
            raise ValueError(
                "schedule: by_epoch: true counts milestones in epochs, which needs max_epochs "
                f"(got max_iters {self.max_iters})"
            )


@dataclass(kw_only=True)
class TTAConfig:
    """Test-time augmentation: the mean of predictions over ``scales`` (and their flips)."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False

    def __post_init__(self) -> None:
        # Checked here, not at the first validation: a run would otherwise train for an interval
        # and then stop (an empty list) or fail inside a resize (a zero scale).
        if not self.scales:
            raise ValueError("scales: expected at least one resize ratio, e.g. [1.0], got []")
        if any(s <= 0 for s in self.scales):
            raise ValueError(f"scales: expected resize ratios > 0, got {self.scales}")


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
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("crop_size", "stride"):
            value = getattr(self, name)
            if value is not None and min(value) < 1:
                raise ValueError(f"{name}: expected [height, width] of at least 1 pixel, got {list(value)}")
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ValueError(
                f"mode: 'slide' needs crop_size and stride, both [height, width] "
                f"(got crop_size {self._shown(self.crop_size)}, stride {self._shown(self.stride)})"
            )
        if self.crop_size is not None and self.stride is not None:
            if any(s > c for s, c in zip(self.stride, self.crop_size)):
                raise ValueError(
                    f"stride: expected at most crop_size {list(self.crop_size)} per side (a longer step "
                    f"leaves pixels no window covers), got {list(self.stride)}"
                )

    @staticmethod
    def _shown(pair: tuple[int, int] | None) -> str:
        return "null" if pair is None else str(list(pair))


@dataclass(kw_only=True)
class EvaluateConfig(InferenceModeConfig):
    """Evaluation: inference settings plus the metrics to compute.

    ``format_only`` (MMSeg's ``test_evaluator.format_only``): ``masklab evaluate`` writes one label
    PNG per image of ``dataset.val`` into ``output_dir`` and computes no metrics (semantic configs;
    the command line's ``--format-only DIR`` sets both). Validation during training ignores both.
    """

    metrics: list[str] = field(default_factory=lambda: ["mIoU"])
    format_only: bool = False
    output_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format_only and not self.output_dir:
            raise ValueError("format_only: true needs output_dir, the folder the label PNGs are written to")
        if self.output_dir and not self.format_only:
            raise ValueError(
                f"output_dir: {self.output_dir!r} is only written with format_only: true (no metrics are "
                "computed then); set format_only: true or remove output_dir"
            )


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
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(
                f"input_size: expected [height, width] of at least 1 pixel, got {self.input_size}"
            )


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
# How a family's own spec format is named, and the classes its ``model``/``dataset`` sections bind
# to (they are not ``{type: ...}`` nodes): used to recognise such a spec written without its task.
_FAMILY_SPECS: dict[str, tuple[str, dict[str, str]]] = {
    "mal": (
        "MAL (TAO)",
        {
            "dataset": "masklab.models.mal.config:MalDatasetConfig",
            "model": "masklab.models.mal.config:MalModelConfig",
        },
    )
}
# Top-level keys of other tools' configs that live in a section here (TAO's results_dir, MMSeg's work_dir).
_MOVED_TOP_LEVEL: dict[str, str] = {"results_dir": "runtime.work_dir", "work_dir": "runtime.work_dir"}


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


class Problems:
    """Config problems gathered across sections, reported as one ``; ``-separated line.

    Each problem is filed under the top-level key it is about, so the line lists them in the
    order the config has its sections (``train`` errors before an overridden ``runtime``).
    """

    def __init__(self, cfg: Config) -> None:
        self._order = {str(k): i for i, k in enumerate(cfg)}
        self._items: list[tuple[str, str]] = []

    def add(self, section: str, message: str) -> None:
        """File ``message`` (one or more ``; ``-joined problems) under top-level key ``section``."""
        if message and all(message != m for _, m in self._items):
            self._items.append((section, message))

    def extend(self, other: Problems) -> None:
        for section, message in other._items:
            self.add(section, message)

    def __bool__(self) -> bool:
        return bool(self._items)

    def line(self) -> str:
        """The problems in config order (a stable sort: within a section, in the order found)."""
        # ``task`` decides how everything else reads: first even when the file does not write it.
        last = len(self._order)
        ordered = sorted(self._items, key=lambda it: self._order.get(it[0], -1 if it[0] == "task" else last))
        return "; ".join(m for _, m in ordered)

    def raise_if_any(self) -> None:
        if self._items:
            raise ConfigError(self.line())


def resolve_sections(cfg: Config) -> ResolvedConfig:
    """Validate the top-level sections of ``cfg`` against the schema of its ``task``.

    Raises:
        ConfigError: an unknown task or top-level key, or any bad key in any section: every
            problem of every section in one line.
    """
    problems = Problems(cfg)
    rc = collect_sections(cfg, problems)
    problems.raise_if_any()
    assert rc is not None
    return rc


def collect_sections(cfg: Config, problems: Problems) -> ResolvedConfig | None:
    """Validate the sections of ``cfg``, adding every problem to ``problems`` instead of raising.

    Returns:
        The resolved config, where a section that failed is None; None when nothing more can be
        checked (an unknown task, or a spec of another family written without its ``task:``).
    """
    task = cfg.get("task", "semantic")
    if isinstance(task, str) and task in _FAMILY_MODULES:
        importlib.import_module(_FAMILY_MODULES[task])
    if task not in _SCHEMAS:
        hint = did_you_mean(str(task), _SCHEMAS)
        problems.add(
            "task",
            f"{cfg.source('task')}: task: unknown task {task!r}{hint} (known: {', '.join(_SCHEMAS)})",
        )
        return None
    schema = _SCHEMAS[task]
    known = ["task", *schema, *PASSTHROUGH]
    for key in (k for k in cfg if k not in known):
        problems.add(str(key), _unknown_top_level(cfg, str(key), known))
    sections: dict[str, Any] = {}
    failed = Problems(cfg)
    for name, cls in schema.items():
        if name not in cfg or cfg[name] is None:
            sections[name] = None if name == "train" or name not in BASE_SECTIONS else cls()
            continue
        try:
            sections[name] = build_dataclass(cls, cfg[name], path=name, source=cfg.source(name))
        except ConfigError as exc:
            sections[name] = None
            failed.add(name, str(exc))
    foreign = _other_family(cfg, task) if failed or problems or _untyped_nodes(cfg) else None
    if foreign is not None:  # the other family's line replaces a wall of schema errors
        problems.add("task", foreign)
        return None
    problems.extend(failed)
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


def _unknown_top_level(cfg: Config, key: str, known: list[str]) -> str:
    where = cfg.source(key)
    if key in _MOVED_TOP_LEVEL:
        dest = _MOVED_TOP_LEVEL[key]
        return f"{where}: {key}: not a top-level key here; write it as {dest} (got {cfg[key]!r})"
    hint = did_you_mean(key, known) or f" (sections: {', '.join(known)})"
    return f"{where}: {key}: unknown top-level key{hint}"


def _untyped_nodes(cfg: Config) -> bool:
    """``model``/``dataset`` shaped unlike component nodes (a TAO spec's ``model: {arch: ...}``)."""
    model, dataset = cfg.get("model"), cfg.get("dataset")
    return (isinstance(model, Mapping) and "type" not in model) or (
        isinstance(dataset, Mapping) and "type" in dataset
    )


def _field_names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _family_markers(cfg: Config, task: str, family: str) -> list[str]:
    """Dotted keys of ``cfg`` that ``family``'s schema knows and ``task``'s does not, one per section."""
    importlib.import_module(_FAMILY_MODULES[family])
    ours, theirs = _SCHEMAS[task], _SCHEMAS[family]
    nodes = _FAMILY_SPECS.get(family, ("", {}))[1]
    markers = []
    for section in cfg:
        value = cfg[section]
        if not isinstance(value, Mapping):
            continue
        if section in nodes:
            module, _, name = nodes[section].partition(":")
            keys = _field_names(getattr(importlib.import_module(module), name)) - {"type"}
        else:
            keys = _field_names(theirs.get(section)) - _field_names(ours.get(section))
        hit = next((k for k in value if k in keys), None)
        if hit is not None:
            markers.append(f"{section}.{hit}")
    return markers


def _other_family(cfg: Config, task: str) -> str | None:
    """One line when ``cfg`` reads as a spec of another family than its ``task`` (two sections
    or more with that family's keys), else None."""
    for family in _FAMILY_MODULES:
        if family == task:
            continue
        markers = _family_markers(cfg, task, family)
        if len(markers) < 2:
            continue
        label = _FAMILY_SPECS.get(family, (family, {}))[0]
        shown = ", ".join(markers[:3])
        if "task" in cfg:
            return (
                f"{cfg.source('task')}: task: this reads as a {label} spec ({shown}), not a {task} one; "
                f"write 'task: {family}'"
            )
        return f"{cfg.filename}: this reads as a {label} spec ({shown}): add 'task: {family}' at the top"
    return None
