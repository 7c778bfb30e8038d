"""Which settings infer uses: the ``inference`` section, ``evaluate``'s value for keys it leaves unset."""

from __future__ import annotations

import pytest

from masklab.config.assemble import apply_eval_settings, resolve
from masklab.errors import ConfigError
from masklab.inference.settings import inference_settings

from .conftest import TINY_FCN

SLIDE = ["mode=slide", "crop_size=[32,32]", "stride=[16,16]"]


def _settings(*overrides: str):
    return inference_settings(resolve(TINY_FCN, list(overrides)))


def test_inference_keys_win_over_evaluate() -> None:
    s = _settings(*(f"inference.{o}" for o in SLIDE), "inference.tta.flip=true", "inference.batch_size=3")
    assert (s.mode, s.crop_size, s.stride) == ("slide", (32, 32), (16, 16))
    assert s.tta.flip and s.tta.scales == [1.0] and s.batch_size == 3


def test_unset_inference_keys_take_evaluate_values() -> None:
    """A config that only sets ``evaluate`` (every Cityscapes config slides there) infers the same way."""
    s = _settings(*(f"evaluate.{o}" for o in SLIDE), "evaluate.tta.scales=[0.5,1.0]", "evaluate.max_dets=7")
    assert (s.mode, s.crop_size, s.stride) == ("slide", (32, 32), (16, 16))
    assert s.tta.scales == [0.5, 1.0] and s.max_dets == 7


def test_a_written_default_still_wins() -> None:
    """``inference.mode: whole`` infers whole images while evaluation slides; per TTA sub-key too."""
    s = _settings(
        *(f"evaluate.{o}" for o in SLIDE),
        "inference.mode=whole",
        "evaluate.tta={scales: [0.5, 1.0], flip: true}",
        "inference.tta.flip=false",
    )
    assert s.mode == "whole"
    assert s.tta.scales == [0.5, 1.0] and not s.tta.flip


def test_inference_only_keys_are_kept() -> None:
    s = _settings("inference.opacity=0.25", "inference.out_dir=o", "inference.score_threshold=0.7")
    assert (s.opacity, s.out_dir, s.score_threshold) == (0.25, "o", 0.7)


def test_mixed_settings_that_do_not_hold_together_name_their_sources() -> None:
    """An inference crop paired with evaluate's longer stride (the schema refuses stride > crop)."""
    overrides = [*(f"evaluate.{o}" for o in SLIDE), "inference.crop_size=[8,8]"]
    with pytest.raises(ConfigError, match=r"taken from evaluate.mode, inference.crop_size, evaluate.stride"):
        _settings(*overrides)


def test_evaluation_keeps_reading_evaluate() -> None:
    from masklab.config.assemble import build_model

    rc = resolve(TINY_FCN, [*(f"inference.{o}" for o in SLIDE), "evaluate.mode=whole"])
    model = build_model(rc, _meta())
    apply_eval_settings(model, rc)
    assert model.test_mode == "whole"
    apply_eval_settings(model, rc, inference_settings(rc))
    assert (model.test_mode, model.crop_size) == ("slide", (32, 32))


def test_the_default_tta_is_no_tta() -> None:
    """scales [1.0] without flip augments nothing: the model takes its plain (padded) path."""
    from masklab.config.assemble import build_model

    rc = resolve(TINY_FCN)
    model = build_model(rc, _meta())
    apply_eval_settings(model, rc)
    assert model.tta is None
    apply_eval_settings(model, resolve(TINY_FCN, ["evaluate.tta.flip=true"]))
    assert model.tta is not None and model.tta.flip


def _meta():
    from masklab.data.meta import DatasetMeta

    return DatasetMeta(classes=("a", "b", "c"))
