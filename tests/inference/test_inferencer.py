"""The Inferencer: which settings it predicts with, small images, argument checks, output names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.errors import CheckpointError, ConfigError, DataError
from masklab.inference.inferencer import Inferencer, inference_model, show_result

from .conftest import REPO, SEGFORMER, TINY_FCN

SLIDE = ["mode=slide", "crop_size=[64,64]", "stride=[32,32]"]


def _fcn(synth: Path, *overrides: str, weights: Path | None = None, **kwargs) -> Inferencer:
    torch.manual_seed(0)
    return Inferencer(
        TINY_FCN, weights, device="cpu", overrides=[f"dataset.root={synth}", *overrides], **kwargs
    )


def _image(size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the inference section is read
def test_inference_section_decides_how_predictions_are_made(synth: Path, fcn_ckpt: Path) -> None:
    slide = _fcn(synth, *(f"inference.{o}" for o in SLIDE), "inference.tta.flip=true", weights=fcn_ckpt)
    assert (slide.model.test_mode, slide.model.crop_size, slide.model.tta.flip) == ("slide", (64, 64), True)
    plain = _fcn(synth, *(f"evaluate.{o}" for o in SLIDE), "inference.mode=whole", weights=fcn_ckpt)
    assert plain.model.test_mode == "whole" and plain.model.tta is None
    image = _image(96)
    a, b = slide(image)[0], plain(image)[0]
    assert not torch.allclose(a.logits.softmax(0), b.logits.softmax(0))


def test_unset_inference_keys_follow_evaluate(synth: Path) -> None:
    inf = _fcn(synth, *(f"evaluate.{o}" for o in SLIDE), "evaluate.batch_size=3")
    assert (inf.model.test_mode, inf.model.stride, inf.settings.batch_size) == ("slide", (32, 32), 3)


def test_inference_max_dets_sets_the_instance_top_k(synth: Path) -> None:
    from tests.cli.test_mask2former_cli import CONFIG, TINY

    inf = Inferencer(
        CONFIG, None, device="cpu", overrides=[*TINY, f"dataset.root={synth}", "inference.max_dets=7"]
    )
    assert inf.model.test_topk == 7
    with pytest.raises(ConfigError, match="model.test_topk: config says 5 but inference.max_dets is 7"):
        Inferencer(CONFIG, None, device="cpu",
                   overrides=[*TINY, f"dataset.root={synth}", "inference.max_dets=7", "model.test_topk=5"])  # fmt: skip


# ---------------------------------------------------------------- small images
def test_an_image_smaller_than_the_size_divisor_predicts(synth: Path) -> None:
    """20x20 with SegFormer (a stride-4 8x8 reduction conv): padded to 32 as without TTA."""
    torch.manual_seed(0)
    inf = Inferencer(SEGFORMER, None, device="cpu", overrides=[f"dataset.root={synth}"])
    pred = inference_model(inf, _image(20))
    assert pred.label_map.shape == (20, 20)


def test_an_image_too_small_even_padded_names_the_file(synth: Path, tmp_path: Path) -> None:
    """The GroupNorm FCN meets a 32 px (padded) image as one value per group at stride 32."""
    path = tmp_path / "tiny.png"
    Image.fromarray(_image(20)).save(path)
    with pytest.raises(DataError) as info:
        _fcn(synth)(path)
    message = str(info.value)
    assert message.startswith(f"{path} (20x20): too small for this model even padded to 32x32"), message
    assert "\n" not in message


# ---------------------------------------------------------------- arguments
def test_classes_that_do_not_fit_the_checkpoint_name_the_argument(synth: Path, fcn_ckpt: Path) -> None:
    with pytest.raises(
        ConfigError, match=rf"classes: 3 names given but {fcn_ckpt} holds a model for 7 classes"
    ):
        _fcn(synth, weights=fcn_ckpt, classes=["a", "b", "c"])
    with pytest.raises(ConfigError, match="classes: 'abc'; expected a list of class names"):
        _fcn(synth, weights=fcn_ckpt, classes="abc")
    named = _fcn(synth, weights=fcn_ckpt, classes=[f"k{i}" for i in range(7)])
    assert named.meta.classes[0] == "k0" and len(named.meta.palette) == 7


@pytest.mark.parametrize(
    ("palette", "needle"),
    [
        (
            [[0, 0]] * 7,
            r"palette\[0\]: \[0, 0\]; expected one RGB triple of ints 0-255 per class \(7 classes\)",
        ),
        ([[0, 0, 0]] * 2, r"palette: 2 colours for 7 classes"),
        ([[0, 0, 0]] * 6 + [[0, 0, 300]], r"palette\[6\]: \[0, 0, 300\]"),
        ("red", r"palette: 'red'"),
    ],
    ids=["pairs", "count", "range", "string"],
)
def test_a_bad_palette_is_one_line(synth: Path, fcn_ckpt: Path, palette: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _fcn(synth, weights=fcn_ckpt, palette=palette)


def test_another_models_checkpoint_is_named(synth: Path, fcn_ckpt: Path, tmp_path: Path) -> None:
    state = torch.load(fcn_ckpt, weights_only=True)["model"]
    other = tmp_path / "other.pth"
    torch.save({"model": {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if "conv_seg" in k else v
                          for k, v in state.items()}}, other)  # fmt: skip
    with pytest.raises(CheckpointError, match=rf"^{other}: weights do not fit this model .*conv_seg"):
        _fcn(synth, weights=other)


def test_a_checkpoint_of_another_task_names_both_tasks(synth: Path, fcn_ckpt: Path, tmp_path: Path) -> None:
    other = tmp_path / "instance.pth"
    torch.save({**torch.load(fcn_ckpt, weights_only=True), "config": {"task": "instance"}}, other)
    with pytest.raises(
        CheckpointError, match=rf"^{other}: a 'task: instance' checkpoint .* is a 'task: semantic' config"
    ):
        _fcn(synth, weights=other)


def test_a_mal_config_is_refused_in_one_line() -> None:
    mal = REPO / "configs" / "mal" / "mal_tiny_synthetic-64.yaml"
    with pytest.raises(ConfigError, match=rf"^{mal}: a 'task: mal' config labels boxes, .* --boxes"):
        Inferencer(mal, device="cpu")


@pytest.mark.parametrize("opacity", [2.0, -1.0, float("nan")])
def test_opacity_outside_0_1_is_refused(synth: Path, tmp_path: Path, opacity: float) -> None:
    inf = _fcn(synth)
    with pytest.raises(ConfigError, match=r"^opacity: .*; expected a value in \[0, 1\]$"):
        inf(_image(), out_dir=tmp_path / "o", opacity=opacity)
    with pytest.raises(ConfigError, match="opacity"):
        show_result(inf, _image(), inf(_image())[0], opacity=opacity)
    assert not (tmp_path / "o").exists()


def test_config_opacity_outside_0_1_is_refused_when_writing(synth: Path, tmp_path: Path) -> None:
    inf = _fcn(synth, "inference.opacity=1.5")
    assert len(inf(_image())) == 1  # nothing drawn, nothing checked
    with pytest.raises(ConfigError, match=r"inference.opacity: 1.5; expected a value in \[0, 1\]"):
        inf(_image(), out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- outputs
def test_outputs_mirror_the_input_folder(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    for k, rel in enumerate(("a/x.png", "b/x.png", "a/x.jpg", ".ipynb_checkpoints/x.png")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(seed=k)).save(root / rel)
    preds = _fcn(synth, "inference.batch_size=2")(root, out_dir=tmp_path / "out")
    assert len(preds) == 3
    for kind in ("pred", "vis"):
        written = sorted(
            p.relative_to(tmp_path / "out" / kind).as_posix()
            for p in (tmp_path / "out" / kind).rglob("*.png")
        )
        assert written == ["a/x.jpg.png", "a/x.png.png", "b/x.png"], written


def test_two_inputs_for_one_output_are_refused_before_running(synth: Path, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        Image.fromarray(_image()).save(tmp_path / name / "x.png")
    with pytest.raises(DataError, match="both would be written as x.png"):
        _fcn(synth)([tmp_path / "one", tmp_path / "two"], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_nothing_half_written(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from masklab.inference import writers

    real, calls = writers.write_rgb_png, []

    def full_disk_on_the_third(path: Path, array: np.ndarray) -> Path:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.EFBIG, "File too large", str(path))
        return real(path, array)

    monkeypatch.setattr(writers, "write_rgb_png", full_disk_on_the_third)
    inf, images = _fcn(synth), [_image(seed=k) for k in range(4)]
    earlier = tmp_path / "old" / "pred" / "earlier.png"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run")
    for out in (tmp_path / "new" / "out", tmp_path / "old"):
        calls.clear()
        with pytest.raises(
            ConfigError, match=rf"^{out}: could not write the predictions \(File too large\); nothing"
        ):
            inf(images, out_dir=out)
    assert not (tmp_path / "new").exists()
    assert inf([], out_dir=tmp_path / "new" / "out") == [] and not (tmp_path / "new").exists()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "old").rglob("*")) == [
        Path("old/pred"),
        Path("old/pred/earlier.png"),
    ]


def test_inference_model_returns_one_result_for_one_image(synth: Path, tmp_path: Path) -> None:
    inf = _fcn(synth)
    path = tmp_path / "one.png"
    Image.fromarray(_image()).save(path)
    single = inference_model(inf, str(path))
    assert not isinstance(single, list) and single.label_map.shape == (64, 64)
    assert not isinstance(inference_model(inf, _image()), list)
    listed = inference_model(inf, [str(path), _image()])
    assert isinstance(listed, list) and len(listed) == 2
    assert isinstance(inference_model(inf, tmp_path), list)


def test_a_prediction_does_not_depend_on_the_other_images_in_its_batch(synth: Path) -> None:
    # A 61x97 image batched with 64x64 ones would be padded to 96x128 instead of its own 64x128.
    images = [_image(seed=0), np.random.default_rng(1).integers(0, 256, (61, 97, 3), dtype=np.uint8)]
    images += [_image(seed=2), _image(seed=3)]
    inf = _fcn(synth)
    one_by_one = [inf(image)[0] for image in images]
    batched = inf(images, batch_size=8)
    assert [p.label_map.shape for p in batched] == [(64, 64), (61, 97), (64, 64), (64, 64)]
    for alone, together in zip(one_by_one, batched, strict=True):
        assert torch.equal(alone.label_map, together.label_map)


def test_sliding_windows_too_small_name_the_crop_setting(synth: Path) -> None:
    inf = _fcn(synth, "inference.mode=slide", "inference.crop_size=[32,32]", "inference.stride=[16,16]")
    with pytest.raises(
        DataError, match=r"array input #0 \(64x64\): sliding windows of 32x32 .*inference.crop_size"
    ):
        inf(_image())


# ---------------------------------------------------------------- which device
def test_no_device_argument_follows_the_configs_runtime_device(
    synth: Path, fcn_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Inferencer(...)` and `masklab infer` without a device take `runtime.device` (session 10: they
    took "auto", so `runtime.device: cpu` ran on the GPU, and every torchrun rank asked for cuda:RANK)."""
    import masklab.config.assemble as assemble
    from masklab.cli.main import main

    asked: list[str] = []
    real = assemble.resolve_device
    monkeypatch.setattr(assemble, "resolve_device", lambda d: asked.append(d) or real("cpu"))
    overrides = [f"dataset.root={synth}", "runtime.device=cuda:3"]
    Inferencer(TINY_FCN, fcn_ckpt, overrides=overrides)
    assert asked == ["cuda:3"]
    Inferencer(TINY_FCN, fcn_ckpt, device="cpu", overrides=overrides)
    assert asked[-1] == "cpu"
    asked.clear()
    image = tmp_path / "a.png"
    Image.fromarray(_image()).save(image)
    argv = [
        "infer",
        str(TINY_FCN),
        str(fcn_ckpt),
        *overrides,
        "--input",
        str(image),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0
    assert asked == ["cuda:3"]


# ---------------------------------------------------------------- MMSeg-style function forms
def test_function_forms_are_exported_by_the_package() -> None:
    import masklab.inference as package
    from masklab import Inferencer as top_level  # the README's import
    from masklab.inference import inferencer as module

    assert top_level is Inferencer and package.Inferencer is Inferencer
    for name in ("init_model", "inference_model", "show_result"):
        assert getattr(package, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_show_result_refuses_a_result_of_another_image_size(synth: Path) -> None:
    inf = _fcn(synth)
    result = inference_model(inf, _image(64))
    with pytest.raises(ConfigError, match=r"^result: predicted at 64x64 but image array input #0 is 40x40; "):
        show_result(inf, _image(40), result)


def test_show_result_refuses_a_folder_as_out_file(synth: Path, tmp_path: Path) -> None:
    inf = _fcn(synth)
    image = _image(64)
    with pytest.raises(ConfigError, match=rf"^out_file: {tmp_path} is a folder; expected an image file path"):
        show_result(inf, image, inference_model(inf, image), out_file=tmp_path)
    assert list(tmp_path.iterdir()) == []
    vis = show_result(inf, image, inference_model(inf, image), out_file=tmp_path / "v" / "vis.png")
    assert vis.shape == (64, 64, 3) and (tmp_path / "v" / "vis.png").is_file()
