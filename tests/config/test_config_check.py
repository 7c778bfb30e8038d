"""check_config: what ``resolve`` and ``masklab config show`` check before anything is built.

Every key of every section and node, errors of all sections in one line, cross-field checks named
by the key and the file (or ``<override>``) that set it, another family's spec recognised.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from masklab.config import load_config, show_config
from masklab.config.assemble import resolve
from masklab.config.check import check_config
from masklab.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FCN = CONFIGS / "fcn" / "fcn_mit-b0_1xb8-3600i_synthetic-128x128.yaml"
MAL = CONFIGS / "mal" / "mal_tiny_synthetic-64.yaml"

TRAIN = """\
train:
  max_iters: 100
  batch_size: 2
  val_interval: 50
  checkpoint_interval: 50
  optim: {type: SGD, lr: 0.01}
"""


def _error(path: Path, overrides: list[str]) -> str:
    """The one-line error of ``resolve``; ``config show`` must give the same."""
    with pytest.raises(ConfigError) as err:
        resolve(path, overrides)
    message = str(err.value)
    with pytest.raises(ConfigError) as shown:
        show_config(path, overrides)
    assert str(shown.value) == message
    assert "\n" not in message
    return message


# -- 1: nodes are bound when the config is resolved ----------------------------------------------
@pytest.mark.parametrize(
    ("path", "override", "expected"),
    [
        (FCN, "model.decode_head.chanels=3",
         "<override>: model.decode_head.chanels: unknown key for FCNHead; did you mean 'channels'?"),
        (FCN, "dataset.train.splt=val",
         "<override>: dataset.train.splt: unknown key for SyntheticSemanticDataset; did you mean 'split'?"),
        (MAL, "model.mask_head_num_conv=3",
         "<override>: model.mask_head_num_conv: unknown key for MalModelConfig; did you mean 'mask_head_num_convs'?"),
        (MAL, "dataset.train_ann_pth=x",
         "<override>: dataset.train_ann_pth: unknown key for MalDatasetConfig; did you mean 'train_ann_path'?"),
        (MAL, "dataset.crop_size=abc", "<override>: dataset.crop_size: expected int, got str 'abc'"),
        (MAL, "model.frozen_stages=[1,2]",
         "<override>: model.frozen_stages: expected one value, e.g. [-1], got [1, 2]"),
        (MAL, "model.teacher_momentum=0.1", "<override>: model.teacher_momentum: expected a decay in [0.5, 1)"),
    ],
)  # fmt: skip
def test_show_and_resolve_check_every_node(path: Path, override: str, expected: str) -> None:
    assert _error(path, [override]).startswith(expected)


def test_nodes_are_checked_not_built(write) -> None:
    # Picky raises when constructed: checking never constructs it.
    top = write("x.yaml", "model: {type: 'config_components:Picky', mode: value}\n")
    assert check_config(load_config(top)).model["mode"] == "value"
    with pytest.raises(
        ConfigError, match=r"<override>: model\.mood: unknown key for Picky; did you mean 'mode'\?"
    ):
        check_config(load_config(top, ["model.mood=data"]))


def test_keys_the_build_derives_may_be_left_out(write) -> None:
    # num_classes comes from the dataset metadata; in_channels has no owner at the top level.
    top = write("x.yaml", "model: {type: 'config_components:Head'}\n")
    with pytest.raises(ConfigError) as err:
        check_config(load_config(top))
    assert str(err.value) == f"{top}: model: missing required key 'in_channels' for Head"
    with pytest.raises(ConfigError, match=r"model\.num_classes: expected int, got str 'x'"):
        check_config(load_config(top, ["model.in_channels=3", "model.num_classes=x"]))
    assert check_config(load_config(top, ["model.in_channels=3"])).model["in_channels"] == 3


# -- 2: cross-field checks name the key and who set it ------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.max_epochs=3",
         "<override>: train.max_epochs: a MAL spec sets this through the TAO key(s) num_epochs (got 3)"),
        ("train.mask_thres=[0.1,0.2]", "<override>: train.mask_thres: expected 1 or 3 values, got [0.1, 0.2]"),
        ("train.lr=-1", "<override>: train.lr: lr must be > 0"),
        ("model.teacher_momentum=0.1", "<override>: model.teacher_momentum: expected a decay"),
        ("train.crf_kernel_size=2", "<override>: train.crf_kernel_size: expected an odd size >= 1, got 2"),
    ],
)  # fmt: skip
def test_cross_field_errors_name_the_override(override: str, expected: str) -> None:
    message = _error(MAL, [override])
    assert message.startswith(expected), message
    assert "MalTrainConfig:" not in message


def test_cross_field_errors_name_the_file_that_set_the_key(write) -> None:
    top = write("top.yaml", f"_base_: {MAL}\nmodel: {{teacher_momentum: 0.1}}\n")
    assert _error(top, []).startswith(f"{top}: model.teacher_momentum: expected a decay")
    # lr (set by the base) and warmup_epochs (set by this file) share a rule: this file's key is blamed.
    top = write("top.yaml", f"_base_: {MAL}\ntrain: {{warmup_epochs: -1}}\n")
    assert _error(top, []) == (
        f"{top}: train.warmup_epochs: lr must be > 0 and warmup_epochs >= 0, got 0.000125, -1.0"
    )


# -- 3: a TAO MAL spec without ``task: mal`` -------------------------------------------------------
def _tao_spec(write, head: str = "", tail: str = "") -> Path:
    body = "\n".join(line for line in MAL.read_text().splitlines() if not line.startswith("task:"))
    return write("spec.yaml", head + body + "\n" + tail)


def test_mal_spec_without_task_is_one_line(write) -> None:
    spec = _tao_spec(write)
    message = _error(spec, [])
    assert message == (
        f"{spec}: this reads as a MAL (TAO) spec (dataset.train_ann_path, model.arch, train.num_gpus): "
        "add 'task: mal' at the top"
    )
    spec = _tao_spec(write, head="task: semantic\n")
    assert _error(spec, []).startswith(f"{spec}: task: this reads as a MAL (TAO) spec (")


def test_tao_results_dir_points_to_runtime_work_dir(write) -> None:
    spec = _tao_spec(write, tail="results_dir: /results\n")
    message = _error(spec, [])
    assert message.startswith(f"{spec}: this reads as a MAL (TAO) spec (")
    assert message.endswith(
        f"; {spec}: results_dir: not a top-level key here; write it as runtime.work_dir (got '/results')"
    )
    spec = _tao_spec(write, head="task: mal\n", tail="results_dir: /results\n")
    assert _error(spec, []) == (
        f"{spec}: results_dir: not a top-level key here; write it as runtime.work_dir (got '/results')"
    )


def test_one_stray_key_is_not_taken_for_another_family(write) -> None:
    top = write("x.yaml", TRAIN + "  num_epochs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.num_epochs: unknown key for TrainConfig"):
        check_config(load_config(top))


# -- 4: a dotted override of ``type`` replaces the node ----------------------------------------
def test_type_override_replaces_the_node() -> None:
    rc = resolve(FCN, ["model.decode_head.type=PSPHead", "model.decode_head.channels=16"])
    assert rc.model["decode_head"].to_dict() == {"type": "PSPHead", "channels": 16}
    message = _error(FCN, ["model.decode_head.type=PSPHead", "model.decode_head.num_convs=2"])
    assert message.startswith(
        "<override>: model.decode_head.num_convs: unknown key for PSPHead (valid keys: "
    )
    assert "did you mean" not in message


# -- 5: problems of all sections at once, in config order --------------------------------------
def test_problems_of_every_section_in_one_line(write) -> None:
    base = write("base.yaml", TRAIN)
    top = write("x.yaml", "_base_: base.yaml\ntrain:\n  optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        resolve(top, ["runtime.seed=one"])
    assert str(err.value) == (
        f"{top}: train.optim.lrr: unknown key for OptimConfig; did you mean 'lr'?; "
        "<override>: runtime.seed: expected int, got str 'one'"
    )
    assert base.exists()
    message = _error(FCN, ["model.decode_head.chanels=1", "train.max_iter=3"])
    assert message == (
        "<override>: model.decode_head.chanels: unknown key for FCNHead; did you mean 'channels'?; "
        "<override>: train.max_iter: unknown key for TrainConfig; did you mean 'max_iters'?"
    )


# -- 6: evaluation and inference settings ------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("evaluate.tta.scales=[]", "evaluate.tta.scales: expected at least one resize ratio, e.g. [1.0], got []"),
        ("evaluate.tta.scales=[0]", "evaluate.tta.scales: expected resize ratios > 0, got [0.0]"),
        ("evaluate.tta.flip=yes", "evaluate.tta.flip: expected bool, got str 'yes'"),
        ("evaluate.stride=[0,0]", "evaluate.stride: expected [height, width] of at least 1 pixel, got [0, 0]"),
        ("evaluate.crop_size=[64,-1]",
         "evaluate.crop_size: expected [height, width] of at least 1 pixel, got [64, -1]"),
        ("evaluate.mode=slide",
         "evaluate.mode: 'slide' needs crop_size and stride, both [height, width] (got crop_size null, stride null)"),
        ("evaluate.mode=tiles", "evaluate.mode: expected one of 'whole', 'slide', got str 'tiles'"),
        ("inference.tta.scales=[-0.5]", "inference.tta.scales: expected resize ratios > 0, got [-0.5]"),
    ],
)  # fmt: skip
def test_inference_settings_are_checked_when_resolved(override: str, expected: str) -> None:
    assert _error(FCN, [override]) == f"<override>: {expected}"


def test_stride_longer_than_crop(write) -> None:
    top = write("x.yaml", "evaluate: {mode: slide, crop_size: [64, 64], stride: [32, 32]}\n")
    assert check_config(load_config(top)).evaluate.stride == (32, 32)
    with pytest.raises(ConfigError) as err:
        check_config(load_config(top, ["evaluate.stride=[32,65]"]))
    assert str(err.value) == (
        "<override>: evaluate.stride: expected at most crop_size [64, 64] per side (a longer step leaves "
        "pixels no window covers), got [32, 65]"
    )
    # inference takes evaluate's crop when it sets only a stride: the pair is checked too.
    with pytest.raises(ConfigError) as err:
        check_config(load_config(top, ["inference.stride=[96,96]"]))
    message = str(err.value)
    assert "inference" in message and "stride: expected at most crop_size [64, 64] per side" in message
