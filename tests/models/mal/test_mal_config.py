"""The ``task: mal`` config family: TAO keys resolve, typos are one-line errors with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from masklab.config.assemble import resolve
from masklab.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "mal" / "mal_tiny_synthetic-64.yaml"


def test_tao_keys_resolve_and_fill_engine_fields() -> None:
    from masklab.models.mal.config import MalTrainConfig, mal_dataset_config, mal_model_config

    rc = resolve(CONFIG, ["train.num_epochs=3", "train.lr=2e-4", "train.accum_grad_batches=2"])
    assert isinstance(rc.train, MalTrainConfig)
    assert rc.train.max_epochs == 3 and rc.train.accumulate_steps == 2
    assert rc.train.optim.lr == 2e-4 and rc.train.optim.type == "AdamW"  # per sample; scaled at build
    assert rc.train.optim.betas == (0.9, 0.9)
    assert mal_dataset_config(rc).crop_size == 64
    assert mal_model_config(rc).arch == "masklab-tiny"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.crf_num_iterr=3",
            "train.crf_num_iterr: unknown key for MalTrainConfig; did you mean 'crf_num_iter'?",
        ),
        (
            "dataset.crop_sise=3",
            "dataset.crop_sise: unknown key for MalDatasetConfig; did you mean 'crop_size'?",
        ),
        ("model.teacher_momentun=0.9", "did you mean 'teacher_momentum'?"),
        ("evaluate.use_teacher_tests=true", "did you mean 'use_teacher_test'?"),
    ],
)
def test_unknown_key_is_one_line_with_suggestion(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(CONFIG, [override])
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("arch", "suggestion"),
    [("masklab-tny-p4s4", "masklab-tiny-p4s4"), ("vit-mae-bse/16", "vit-mae-base/16")],
)
def test_misspelt_masklab_or_tao_arch_is_one_line_with_suggestion(arch: str, suggestion: str) -> None:
    """A misspelt tiny-encoder or TAO name is refused at check time with the nearest name, instead
    of being handed to timm as a model name."""
    with pytest.raises(ConfigError) as err:
        resolve(CONFIG, [f"model.arch={arch}"])
    msg = str(err.value)
    assert f"model.arch: unknown {arch!r}" in msg and f"did you mean {suggestion!r}?" in msg
    assert "\n" not in msg


def test_engine_names_are_refused_in_favour_of_tao_keys() -> None:
    with pytest.raises(ConfigError, match="num_epochs"):
        resolve(CONFIG, ["train.max_epochs=3"])
    with pytest.raises(ConfigError, match="mask_thres"):
        resolve(CONFIG, ["train.mask_thres=[0.1,0.2]"])
    with pytest.raises(ConfigError, match="coco"):
        resolve(CONFIG, ["dataset.type=voc"])


def test_builds_the_tiny_model_with_tao_values() -> None:
    from masklab.models.mal.build import build_mal_model

    rc = resolve(
        CONFIG, ["model.teacher_momentum=0.9", "train.crf_num_iter=7", "evaluate.use_teacher_test=true"]
    )
    model = build_mal_model(rc)
    assert model.teacher.momentum == pytest.approx(0.9)
    assert model.crf_num_iter == 7 and model.labeling_network == "teacher"


def test_stride8_tiny_arch_gives_crop_over_4_logits_from_a_finer_map() -> None:
    """masklab-tiny-s8 (the 128 px CPU config): a 16x16 encoder map at 128 px, logits 32x32 = crop/4."""
    import torch

    from masklab.models.mal.build import build_mal_model

    cfg = CONFIG.with_name("mal_tiny-s8_synthetic-128.yaml")
    rc = resolve(cfg)
    model = build_mal_model(rc)
    x = torch.zeros(2, 3, 128, 128)
    assert model.student.backbone(x)[0].shape[-2:] == (16, 16)
    assert model.student(x, torch.full((2,), 900.0)).shape == (2, 32, 32)
    # The stride-16 tiny encoder on the same crop gives a 8x8 map.
    rc16 = resolve(cfg, ["model.arch=masklab-tiny"])
    assert build_mal_model(rc16).student.backbone(x)[0].shape[-2:] == (8, 8)


def test_patch_stem_arch_keeps_stride_8_with_fewer_layers() -> None:
    """masklab-tiny-p4s8 (faster labeling): a 4x4 stride-4 stem, the same 16x16 map and 32x32 logits."""
    import torch

    from masklab.models.mal.build import build_mal_model

    rc = resolve(CONFIG.with_name("mal_tiny-s8_synthetic-128.yaml"), ["model.arch=masklab-tiny-p4s8"])
    model = build_mal_model(rc)
    x = torch.zeros(2, 3, 128, 128)
    assert model.student.backbone(x)[0].shape[-2:] == (16, 16)
    assert model.student(x, torch.full((2,), 900.0)).shape == (2, 32, 32)
    convs = [m for m in model.student.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].stride == (4, 4) and len(convs) == 3  # stem, one stride-2 conv, one 3x3


def test_stride_4_patch_stem_arch_for_small_crops() -> None:
    """masklab-tiny-p4s4: the 4x4 stride-4 stem and one 3x3 conv, so an 80 px crop keeps a 20x20 map
    (the stride-8 encoders give 10x10, too coarse for a ring's hole); logits stay at crop / 4."""
    import torch

    from masklab.models.mal.build import build_mal_model

    rc = resolve(
        CONFIG.with_name("mal_tiny-p4s8_synthetic-128.yaml"),
        ["model.arch=masklab-tiny-p4s4", "model.mask_scale_ratio=1.0"],
    )
    model = build_mal_model(rc)
    x = torch.zeros(2, 3, 80, 80)
    assert model.student.backbone(x)[0].shape[-2:] == (20, 20)
    assert model.student.backbone.feature_info.strides == [4]
    assert model.student(x, torch.full((2,), 900.0)).shape == (2, 20, 20)
    convs = [m for m in model.student.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(4, 4), (1, 1)]


def _changed_keys(base_path: str, path: str) -> set[str]:
    """TAO ``dataset`` / ``model`` keys whose values differ between two MAL configs, after checking
    that their ``train`` and ``evaluate`` sections are equal."""
    import dataclasses

    from masklab.models.mal.config import mal_dataset_config, mal_model_config

    base, other = resolve(CONFIG.with_name(base_path)), resolve(CONFIG.with_name(path))
    assert other.train == base.train and other.evaluate == base.evaluate
    pairs = [(fn(base), fn(other)) for fn in (mal_dataset_config, mal_model_config)]
    return {
        f.name for b, o in pairs for f in dataclasses.fields(b) if getattr(b, f.name) != getattr(o, f.name)
    }


@pytest.mark.parametrize(
    ("name", "base", "changed", "crop"),
    [
        (
            "mal_tiny-p4s4_synthetic-96.yaml",
            "mal_tiny-p4s8_synthetic-128.yaml",
            {"crop_size", "arch", "mask_scale_ratio"},
            96,
        ),
        ("mal_tiny-p4s4_synthetic-80.yaml", "mal_tiny-p4s4_synthetic-96.yaml", {"crop_size"}, 80),
    ],
)
def test_small_crop_configs_change_only_crop_and_encoder(
    name: str, base: str, changed: set[str], crop: int
) -> None:
    """The 96 px default and the 80 px config inherit the 128 px one and change only the crop, the
    encoder and the pixel head's upsampling: training and labeling settings stay comparable, and
    the logits come out at crop / 4 straight from the stride-4 encoder."""
    import torch

    from masklab.models.mal.build import build_mal_model

    assert _changed_keys(base, name) == changed
    model = build_mal_model(resolve(CONFIG.with_name(name)))
    x = torch.zeros(2, 3, crop, crop)
    assert model.student.backbone(x)[0].shape[-2:] == (crop // 4, crop // 4)
    assert model.student(x, torch.full((2,), 900.0)).shape == (2, crop // 4, crop // 4)


def test_the_96px_config_keeps_the_stride_4_encoder_on_one_thread() -> None:
    """mal_tiny-p4s4_synthetic-96 (the benchmark default in session 16, the 64 px one's base): the
    stride-4 patch-stem encoder, 16-d K.V product, one torch thread, labels refined on the crop."""
    rc = resolve(CONFIG.with_name("mal_tiny-p4s4_synthetic-96.yaml"))
    assert rc.model.arch == "masklab-tiny-p4s4" and rc.runtime.num_threads == 1
    assert rc.model.mask_head_out_channel == 16
    assert rc.evaluate.crf_refine_space == "crop" and rc.evaluate.crf_refine_iter == 2


def test_the_128px_config_keeps_the_stride_8_patch_stem() -> None:
    """mal_tiny-p4s8_synthetic-128 (the default until session 16, the others' base): a 16x16 map
    and 32x32 logits on a 128 px crop, a 16-d instance vector."""
    import torch

    from masklab.models.mal.build import build_mal_model

    rc = resolve(CONFIG.with_name("mal_tiny-p4s8_synthetic-128.yaml"))
    assert rc.model.arch == "masklab-tiny-p4s8"
    model = build_mal_model(rc)
    assert model.student(torch.zeros(2, 3, 128, 128), torch.full((2,), 900.0)).shape == (2, 32, 32)
    assert model.student.instance_head.mlp[-1].out_features == 16


def test_crf_refinement_settings_reach_the_labeling_model() -> None:
    import torch

    from masklab.models.mal.build import build_mal_model

    rc = resolve(CONFIG, ["evaluate.crf_refine_iter=2", "evaluate.crf_refine_scale=2"])
    model = build_mal_model(rc).eval()
    assert (model.labeling_refine_iter, model.labeling_refine_scale) == (2, 2)
    images = torch.randn(2, 3, 64, 64)
    areas = torch.full((2,), 900.0)
    refined = model._label_probs(images, areas)
    model.set_labeling(refine_iter=0)
    plain = model._label_probs(images, areas)
    assert refined.shape[-2:] == (2 * plain.shape[-2], 2 * plain.shape[-1])
    assert float(refined.min()) >= 0.1 - 1e-6 and float(refined.max()) <= 0.9 + 1e-6  # the CRF clamps


def test_the_64px_config_refines_at_image_resolution() -> None:
    """mal_tiny-p4s4_synthetic-64: the 96 px config's training at a 64 px crop (16x16 logits), its
    labels refined at image resolution (5 taps at dilation 3: the box grown by 6 px); the
    validation crops carry those regions and the benchmark trains it unless told otherwise."""
    import dataclasses

    import torch

    from masklab.models.mal.build import build_mal_model, image_refinement_pad

    cfg = CONFIG.with_name("mal_tiny-p4s4_synthetic-64.yaml")
    rc, base = resolve(cfg), resolve(CONFIG.with_name("mal_tiny-p4s4_synthetic-96.yaml"))
    assert rc.train == base.train and rc.dataset.crop_size == 64
    changed = {
        f.name
        for f in dataclasses.fields(rc.evaluate)
        if getattr(rc.evaluate, f.name) != getattr(base.evaluate, f.name)
    }
    assert changed == {"crf_refine_space", "crf_refine_iter", "crf_refine_dilation", "labeling_precision"}
    assert rc.evaluate.labeling_precision == "auto"
    model = build_mal_model(rc)
    assert model.student(torch.zeros(2, 3, 64, 64), torch.full((2,), 900.0)).shape == (2, 16, 16)
    refinement = model.image_refinement
    assert refinement is not None and (refinement.kernel_size, refinement.dilation, refinement.num_iter) == (
        5,
        3,
        3,
    )
    assert refinement.pad == image_refinement_pad(rc) == 6
    assert refinement.pixel_mean == tuple(model.data_preprocessor.mean.flatten().tolist())
    bench = (CONFIG.parents[2] / "benchmarks" / "mal_vs_baselines.py").read_text()
    assert f'CONFIG = "configs/mal/{cfg.name}"' in bench


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_labeling_precision_runs_the_forward_in_bf16_when_asked(
    monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """bf16 (or auto on a device with native bf16) runs the labeling network under bf16 autocast:
    the convolutions see bf16 inputs; the probabilities come back fp32 and close to fp32's."""
    import torch

    from masklab.models.mal import model as mal_model
    from masklab.models.mal.build import build_mal_model

    monkeypatch.setattr(mal_model, "native_bf16", lambda device: True)
    model = build_mal_model(resolve(CONFIG, [f"evaluate.labeling_precision={precision}"])).eval()
    seen: list[torch.dtype] = []
    model.student.pixel_head.convs[0].register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    images, areas = torch.randn(3, 3, 64, 64), torch.tensor([300.0, 900.0, 5000.0])
    with torch.inference_mode():
        probs = model._label_probs(images, areas)
        assert set(seen) == {torch.float32 if precision == "fp32" else torch.bfloat16}
        model.set_labeling(precision="fp32")
        reference = model._label_probs(images, areas)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, reference, atol=0.02, rtol=0)
    monkeypatch.setattr(mal_model, "native_bf16", lambda device: False)
    model.set_labeling(precision="auto")
    seen.clear()
    with torch.inference_mode():
        model._label_probs(images, areas)
    assert set(seen) == {torch.float32}  # auto without native bf16: fp32


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("evaluate.crf_refine_iter=-1", "crf_refine_iter"),
        ("evaluate.crf_refine_scale=0", "crf_refine_scale"),
        ("evaluate.crf_refine_space=pixel", "crf_refine_space"),
        ("evaluate.crf_refine_kernel_size=4", "crf_refine_kernel_size"),
        ("evaluate.crf_refine_dilation=0", "crf_refine_dilation"),
        ("evaluate.crf_refine_dilation=2", "crf_refine_dilation"),  # crop space does not dilate
        ("evaluate.labeling_precision=fp16", "labeling_precision"),
        (
            "evaluate.crf_refine_space=image,evaluate.crf_refine_scale=4",
            "crf_refine_scale",
        ),  # image: no upsampling
    ],
)
def test_bad_crf_refinement_settings_are_one_line_errors(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(CONFIG, override.split(","))
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("max_dets", "expected"), [(5, [1, 5]), (10, [1, 10]), (50, [1, 10, 50])])
def test_small_evaluate_max_dets_builds_the_mal_evaluator(
    tmp_path: Path, max_dets: int, expected: list
) -> None:
    """``evaluate.max_dets`` <= 10 gave maxDets (1, 10, N), refused as not increasing: every MAL
    evaluation (and training with validation) stopped with an error naming no config key."""
    import json
    from types import SimpleNamespace

    from masklab.config.assemble import build_evaluator

    gt = tmp_path / "gt.json"
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4]}
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                "annotations": [{**box, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]}],
                "categories": [{"id": 1, "name": "a"}],
            }
        )
    )
    rc = resolve(CONFIG, [f"evaluate.max_dets={max_dets}"])
    evaluator = build_evaluator(rc, SimpleNamespace(ann_path=gt))
    assert f"maxDets {expected}" in evaluator.metric_description


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.ema.momentum=0.01", "train.ema: not applied to a MAL run"),
        (
            "train.schedule.policy=cosine",
            "train.schedule: a MAL spec sets the LR schedule through warmup_epochs",
        ),
        ("train.results_dir=/tmp/results", "train.results_dir: '/tmp/results' is not used here"),
        (
            "evaluate.tta.flip=true",
            "evaluate.tta: not applied to MAL labeling; flip TTA is evaluate.use_flip_test",
        ),
        ("inference.tta.scales=[0.5,1.0]", "inference.tta: not applied to MAL labeling"),
        ("inference.crop_size=[64,64]", "sliding-window inference does not apply to MAL"),
    ],
)
def test_engine_settings_mal_does_not_apply_are_refused(override: str, expected: str) -> None:
    """These inherited keys resolved and were silently ignored by MAL training / labeling."""
    with pytest.raises(ConfigError) as err:
        resolve(CONFIG, [override])
    assert expected in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.parametrize("key", ["margin_rate", "test_margin_rate"])
def test_bad_margin_rate_error_names_the_train_key(key: str) -> None:
    """The dataset refused it as ``dataset.<key>``, a key a MAL spec does not have (it is train's),
    without naming the config."""
    with pytest.raises(ConfigError) as err:
        resolve(CONFIG, [f"train.{key}=[1.0,0.5]"])
    assert f"train.{key}: expected [low, high] with 0 <= low <= high" in str(err.value), err.value


def test_pretrained_weights_for_a_tiny_encoder_are_refused(tmp_path: Path) -> None:
    """The tiny encoders ignored train.pretrained_model_path (even a missing file): training
    started from scratch while the spec said otherwise."""
    from masklab.models.mal.build import build_mal_model

    rc = resolve(CONFIG, [f"train.pretrained_model_path={tmp_path / 'mae.pth'}"])
    with pytest.raises(ConfigError) as err:
        build_mal_model(rc)
    assert "train.pretrained_model_path" in str(err.value) and "'masklab-tiny'" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("arch", "why"), [("no_such_vit", "is not a timm model"), ("resnet18", "is not a plain ViT")]
)
def test_bad_arch_error_names_the_spec_key(arch: str, why: str) -> None:
    """Named ``model.backbone.arch``, a key a MAL spec does not have (TAO's is ``model.arch``)."""
    from masklab.models.mal.build import build_mal_model

    with pytest.raises(ConfigError) as err:
        build_mal_model(resolve(CONFIG, [f"model.arch={arch}"]))
    assert str(err.value).startswith(f"model.arch: {arch!r} {why}"), err.value


def test_native_bf16_reads_the_cpu_probes_and_survives_their_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from masklab.models.mal.model import native_bf16

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert native_bf16(cpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not native_bf16(cpu)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert not native_bf16(cpu)  # a torch without the probes: fp32
    assert not native_bf16(torch.device("meta"))
