"""Typed sections: defaults, unknown keys, invariants, family schemas, show_config."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from masklab.config import load_config, register_schema, resolve_sections, show_config
from masklab.config.schema import RuntimeConfig, TrainConfig, schema_for
from masklab.errors import ConfigError

TRAIN = """\
train:
  max_iters: 100
  batch_size: 2
  val_interval: 50
  checkpoint_interval: 50
  optim: {type: AdamW, lr: 6e-5, paramwise: {pos_block: {decay_mult: 0.0}}}
  ema: {momentum: 0.001}
"""


def test_defaults_and_typed_values(write):
    cfg = load_config(write("x.yaml", TRAIN + "model: {type: M}\n"))
    res = resolve_sections(cfg)
    assert res.task == "semantic" and res.runtime == RuntimeConfig()
    assert res.train.optim.type == "AdamW" and res.train.optim.lr == pytest.approx(6e-5)
    assert res.train.optim.paramwise["pos_block"].decay_mult == 0.0
    assert res.train.optim.paramwise["pos_block"].lr_mult == 1.0
    assert res.train.schedule.policy == "poly" and res.train.ema.momentum == 0.001
    assert res.evaluate.mode == "whole" and res.evaluate.metrics == ["mIoU"]
    assert res.export.opset == 17
    assert res.model.type == "M" and res.dataset is None
    assert res.source == str(cfg.filename)


def test_config_without_train_section(write):
    res = resolve_sections(load_config(write("x.yaml", "inference: {out_dir: out}\n")))
    assert res.train is None and res.inference.out_dir == "out"


def test_unknown_section_key_names_file_and_suggests(write):
    top = write("x.yaml", TRAIN + "  log_intreval: 5\n")
    with pytest.raises(
        ConfigError,
        match=r"x\.yaml: train\.log_intreval: unknown key for TrainConfig; did you mean 'log_interval'\?",
    ):
        resolve_sections(load_config(top))
    with pytest.raises(
        ConfigError, match=r"<override>: train\.optim\.lrr: unknown key for OptimConfig; did you mean 'lr'\?"
    ):
        resolve_sections(load_config(top, ["train.log_intreval=null", "train.optim={lrr: 1, type: SGD}"]))


def test_unknown_top_level_key_and_task(write):
    with pytest.raises(ConfigError, match=r"x\.yaml: trian: unknown top-level key; did you mean 'train'\?"):
        resolve_sections(load_config(write("x.yaml", "trian: {}\n")))
    with pytest.raises(
        ConfigError, match=r"x\.yaml: task: unknown task 'semantik'; did you mean 'semantic'\?"
    ):
        resolve_sections(load_config(write("x.yaml", "task: semantik\n")))


@pytest.mark.parametrize(
    ("overrides", "key", "got"),
    [(["train.max_epochs=3"], "max_epochs", "both"), (["train.max_iters=null"], "max_iters", "neither")],
)
def test_max_iters_xor_max_epochs(write, overrides, key, got):
    top = write("x.yaml", TRAIN)
    # A rule tying two keys together blames the one the override just set.
    with pytest.raises(
        ConfigError,
        match=rf"^<override>: train\.{key}: set exactly one of max_iters and max_epochs \(got {got}\)$",
    ):
        resolve_sections(load_config(top, overrides))
    epochs = resolve_sections(load_config(top, ["train.max_iters=null", "train.max_epochs=3"]))
    assert epochs.train.max_epochs == 3


def test_section_type_errors_all_at_once(write):
    top = write("x.yaml", "runtime: {precision: fp64, seed: '1', strategy: ddp}\n")
    with pytest.raises(ConfigError) as err:
        resolve_sections(load_config(top))
    msg = str(err.value)
    assert "runtime.precision: expected one of 'fp32', 'bf16', 'fp16', got str 'fp64'" in msg
    assert "runtime.seed: expected int, got str '1'" in msg


def test_slide_mode_needs_crop_and_stride(write):
    top = write("x.yaml", "evaluate: {mode: slide, crop_size: [8, 8]}\n")
    with pytest.raises(
        ConfigError,
        match=r"x\.yaml: evaluate\.mode: 'slide' needs crop_size and stride, both \[height, width\] "
        r"\(got crop_size \[8, 8\], stride null\)",
    ):
        resolve_sections(load_config(top))
    ok = resolve_sections(load_config(top, ["evaluate.stride=[4,4]"]))
    assert ok.evaluate.crop_size == (8, 8) and ok.evaluate.stride == (4, 4)


def test_register_schema_for_a_family(write):
    @dataclass(kw_only=True)
    class MalTrainConfig(TrainConfig):
        lr: float
        crf_num_iter: int = 100

    register_schema("test_family", train=MalTrainConfig)
    try:
        top = write("x.yaml", "task: test_family\n" + TRAIN + "  lr: 1.5e-6\n")
        res = resolve_sections(load_config(top))
        assert isinstance(res.train, MalTrainConfig) and res.train.crf_num_iter == 100
        with pytest.raises(
            ConfigError,
            match=r"train\.crf_num_itr: unknown key for MalTrainConfig; did you mean 'crf_num_iter'\?",
        ):
            resolve_sections(load_config(top, ["train.crf_num_itr=3"]))
        # The base task keeps the base schema.
        with pytest.raises(ConfigError, match=r"train\.lr: unknown key for TrainConfig"):
            resolve_sections(load_config(top, ["task=semantic"]))
    finally:
        from masklab.config import schema

        schema._SCHEMAS.pop("test_family", None)
    with pytest.raises(TypeError, match="must subclass TrainConfig"):
        register_schema("other", train=RuntimeConfig)
    assert "other" not in schema_for("semantic")


def test_show_config_is_resolved_yaml_that_loads_back(write, tmp_path):
    top = write("x.yaml", TRAIN + "model: {type: 'config_components:Everything', i: 2}\n")
    text = show_config(top, ["runtime.seed=7"])
    out = tmp_path / "shown.yaml"
    out.write_text(text)
    again = resolve_sections(load_config(out))
    assert again.runtime.seed == 7
    assert again.train == resolve_sections(load_config(top)).train
    assert again.model.to_dict() == {"type": "config_components:Everything", "i": 2}
    assert "log_interval: 50" in text  # defaults are filled in


@pytest.mark.parametrize("key", ["inference.batch_size", "evaluate.max_dets"])
def test_inference_counts_must_be_positive(write, key):
    top = write("x.yaml", "evaluate: {mode: whole}\ninference: {mode: whole}\n")
    with pytest.raises(ConfigError, match=rf"^<override>: {key}: expected >= 1, got 0$"):
        resolve_sections(load_config(top, [f"{key}=0"]))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.optim.weight_decay=-0.1", "train.optim.weight_decay: expected >= 0, got -0.1"),
        ("train.optim.betas=[1.5,0.999]",
         "train.optim.betas: expected two coefficients in [0, 1), got [1.5, 0.999]"),
        ("train.optim.eps=-1", "train.optim.eps: expected >= 0, got -1.0"),
        ("train.optim.momentum=-0.9", "train.optim.momentum: expected >= 0, got -0.9"),
        ("train.optim.base_batch_size=0", "train.optim.base_batch_size: expected >= 1 or null, got 0"),
        ("train.optim.norm_decay_mult=-2", "train.optim.norm_decay_mult: expected >= 0, got -2.0"),
        ("train.optim.bias_decay_mult=-1", "train.optim.bias_decay_mult: expected >= 0, got -1.0"),
        ("train.optim.paramwise={backbone: {lr_mult: -1}}",
         "train.optim.paramwise.backbone.lr_mult: expected a multiplier >= 0 (0 freezes / drops decay), got -1.0"),
        ("train.optim.paramwise.pos_block.decay_mult=-0.5",
         "train.optim.paramwise.pos_block.decay_mult: expected a multiplier >= 0 (0 freezes / drops decay), "
         "got -0.5"),
        ("train.schedule.gamma=-1", "train.schedule.gamma: expected a factor > 0, got -1.0"),
        ("train.schedule.power=-1", "train.schedule.power: expected > 0, got -1.0"),
        ("train.schedule.power=0", "train.schedule.power: expected > 0, got 0.0"),
        ("train.schedule.min_lr=-1e-5", "train.schedule.min_lr: expected >= 0, got -1e-05"),
        ("train.schedule.warmup_iters=-5", "train.schedule.warmup_iters: expected >= 0 (0: no warm-up), got -5"),
        ("train.schedule.warmup_ratio=2", "train.schedule.warmup_ratio: expected a factor in [0, 1], got 2.0"),
        ("train.schedule.milestones=[0,5]", "train.schedule.milestones: expected values >= 1, got [0, 5]"),
        ("train.schedule.policy=step",
         "train.schedule.policy: the step policy needs at least one milestone (got milestones [])"),
        ("train.schedule.decay_after_warmup=true",
         "train.schedule.decay_after_warmup: applies to the poly and cosine policies, got policy 'step'"),
        ("train.ema.momentum=0.9998",
         "train.ema.momentum: expected 0 < momentum <= 0.5, the weight of the current parameters per update "
         "(MMEngine's convention; for a decay d write 1 - d), got 0.9998"),
        ("train.ema.interval=0", "train.ema.interval: expected >= 1, got 0"),
        ("train.ema.warmup=-1", "train.ema.warmup: expected >= 0 (0: none), got -1"),
    ],
)  # fmt: skip
def test_optimizer_and_schedule_values_are_checked_when_resolved(write, override, expected):
    """Values torch refuses only when the optimizer is built (a traceback on every rank), and
    values it takes silently (a negative multiplier is a negative LR; power <= 0 a rising LR that
    divides by zero at the last step), are one line when the config is resolved."""
    top = write("x.yaml", TRAIN)
    overrides = [override] + (["train.schedule.policy=step", "train.schedule.milestones=[10]"]
                              if "decay_after_warmup" in override else [])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        resolve_sections(load_config(top, overrides))
    assert str(err.value) == f"<override>: {expected}"
