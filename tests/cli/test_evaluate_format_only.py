"""``masklab evaluate CFG CKPT --format-only DIR`` (MMSeg's ``format_only``): one label PNG per image
of ``dataset.val``, the predictions the evaluation scores, in the dataset's official value range;
no labels needed and no metrics computed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.cli.main import main
from masklab.errors import DataError

TINY = Path(__file__).with_name("configs") / "tiny_fcn.yaml"
REPO = Path(__file__).resolve().parents[2]


def _checkpoint(config: Path, overrides: list[str], path: Path) -> Path:
    """Weights of a freshly built model for ``config``'s ``dataset.val`` classes."""
    from masklab.config.assemble import build_dataset, build_model, resolve
    from masklab.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    rc = resolve(config, overrides)
    meta = build_dataset(rc, "val", labels=False).metainfo
    model = build_model(rc, meta)
    return save_checkpoint(
        path, {"model": model.state_dict(), "iteration": 0, "dataset_meta": meta.to_json()}
    )


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))
    }


def _inferred(config: Path, ckpt: Path, overrides: list[str], images: Path) -> list[np.ndarray]:
    """The Inferencer's label maps for the images under ``images`` (sorted, as folders are read)."""
    from masklab.inference import Inferencer

    return [p.label_map.cpu().numpy() for p in Inferencer(config, ckpt, overrides=overrides)(images)]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_format_only_writes_the_evaluated_predictions(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One PNG per val image, named by its image, at its size, holding the argmax prediction."""
    overrides = [f"dataset.root={tiny_synth}"]
    ckpt = _checkpoint(TINY, overrides, tmp_path / "c.pth")
    out = tmp_path / "sub"
    code = main(["evaluate", str(TINY), str(ckpt), *overrides, "--no-progress", "--format-only", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    written = _pngs(out)
    images = sorted((tiny_synth / "images" / "val").glob("*.png"))
    assert list(written) == [p.name for p in images]
    assert f"wrote {len(images)} label PNGs to {out} (values: training labels 0..6)" in stdout
    assert "mIoU" not in stdout and not ckpt.with_name("c.metrics.json").exists()
    expected = _inferred(TINY, ckpt, overrides, tiny_synth / "images" / "val")
    for (name, got), image, want in zip(written.items(), images, expected, strict=True):
        assert got.dtype == np.uint8 and got.shape == Image.open(image).size[::-1], name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert len(np.unique(np.concatenate([w.ravel() for w in expected]))) > 1  # not a constant map

    # The same through the config keys MMSeg users write (test_evaluator.format_only/output_dir).
    keys = tmp_path / "keys"
    code = main(
        ["evaluate", str(TINY), str(ckpt), *overrides, "--no-progress",
         "evaluate.format_only=true", f"evaluate.output_dir={keys}"]
    )  # fmt: skip
    assert code == 0
    assert {k: v.tolist() for k, v in _pngs(keys).items()} == {k: v.tolist() for k, v in written.items()}


def test_predictions_are_written_at_the_original_size(tiny_synth: Path, tmp_path: Path) -> None:
    """A test pipeline that resizes: the PNGs still have each image's own size."""
    overrides = [
        f"dataset.root={tiny_synth}",
        "dataset.val.pipeline=[{type: Resize, scale: [40, 40], keep_ratio: false}]",
    ]
    ckpt = _checkpoint(TINY, overrides, tmp_path / "c.pth")
    out = tmp_path / "out"
    assert (
        main(["evaluate", str(TINY), str(ckpt), *overrides, "--no-progress", "--format-only", str(out)]) == 0
    )
    sizes = {name: png.shape for name, png in _pngs(out).items()}
    assert sizes and set(sizes.values()) == {(64, 64)}


def test_reduce_zero_label_writes_label_plus_one(tiny_synth: Path, tmp_path: Path) -> None:
    """The same images and weights read through ``reduce_zero_label``: every value is one higher."""
    import json

    classes = json.loads((tiny_synth / "meta.json").read_text())["classes"]
    config = tmp_path / "reduced.yaml"
    config.write_text(
        f"_base_: {TINY}\n"
        "dataset:\n"
        "  val:\n"
        "    _delete_: true\n"
        "    type: FolderSegDataset\n"
        f"    img_dir: {tiny_synth / 'images' / 'val'}\n"
        f"    ann_dir: {tmp_path / 'no_labels'}\n"  # never read: format_only reads images only
        "    img_suffix: .png\n"
        f"    classes: {json.dumps(classes)}\n"
        "    reduce_zero_label: true\n"
    )
    overrides = [f"dataset.root={tiny_synth}"]
    ckpt = _checkpoint(TINY, overrides, tmp_path / "c.pth")
    plain, reduced = tmp_path / "plain", tmp_path / "reduced"
    assert (
        main(["evaluate", str(TINY), str(ckpt), *overrides, "--no-progress", "--format-only", str(plain)])
        == 0
    )
    assert main(["evaluate", str(config), str(ckpt), "--no-progress", "--format-only", str(reduced)]) == 0
    a, b = _pngs(plain), _pngs(reduced)
    assert list(a) == list(b) and a
    for name in a:
        np.testing.assert_array_equal(b[name], a[name].astype(np.int64) + 1, err_msg=name)


def test_cityscapes_test_split_is_written_as_label_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Cityscapes test split (images only, no gtFine folder, city subfolders): train ids become
    the official labelIds and the city folders are mirrored."""
    from masklab.data.datasets.cityscapes import CITYSCAPES_LABEL_ID_TO_TRAIN_ID

    root = tmp_path / "cityscapes"
    rng = np.random.default_rng(0)
    for city, frame in (("berlin", "000000_000019"), ("bonn", "000000_000019"), ("bonn", "000001_000019")):
        folder = root / "leftImg8bit" / "test" / city
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{city}_{frame}_leftImg8bit.png")
    config = tmp_path / "cs.yaml"
    config.write_text(
        f"_base_: {TINY}\n"
        "dataset:\n"
        f"  root: {root}\n"
        "  val: {_delete_: true, type: CityscapesDataset, subset: test}\n"
    )
    ckpt = _checkpoint(config, [], tmp_path / "c.pth")
    out = tmp_path / "out"
    assert main(["evaluate", str(config), str(ckpt), "--no-progress", "--format-only", str(out)]) == 0
    assert "(values: Cityscapes labelIds)" in capsys.readouterr().out
    written = _pngs(out)
    assert list(written) == [
        "berlin/berlin_000000_000019_leftImg8bit.png",
        "bonn/bonn_000000_000019_leftImg8bit.png",
        "bonn/bonn_000001_000019_leftImg8bit.png",
    ]
    train_to_label = {t: i for i, t in CITYSCAPES_LABEL_ID_TO_TRAIN_ID.items() if t != 255}
    assert train_to_label[0] == 7 and train_to_label[18] == 33
    lut = np.array([train_to_label[t] for t in range(19)])
    expected = _inferred(config, ckpt, [], root / "leftImg8bit" / "test")
    for (name, got), want in zip(written.items(), expected, strict=True):
        assert got.shape == (48, 80), name
        np.testing.assert_array_equal(got, lut[want], err_msg=name)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_unwritable_folder_is_one_line_before_the_model_runs(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    overrides = [f"dataset.root={tiny_synth}"]
    ckpt = _checkpoint(TINY, overrides, tmp_path / "c.pth")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    target = blocker if where == "file" else blocker / "out"
    before = sorted(tmp_path.rglob("*"))
    code = main(["evaluate", str(TINY), str(ckpt), *overrides, "--no-progress", "--format-only", str(target)])
    assert code == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: --format-only {target}: ")
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "x"


def test_instance_configs_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "configs" / "mask2former" / "mask2former_r18_1xb8-1000i_synthetic-128x128.yaml"
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"")
    code = main(["evaluate", str(config), str(ckpt), "--format-only", str(tmp_path / "out")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "format_only is for semantic models" in line and "masklab infer" in line
    assert not (tmp_path / "out").exists()


def test_output_names_that_clash_are_refused_before_predicting(tmp_path: Path) -> None:
    from masklab.evaluation.format_only import output_names

    items = [(tmp_path / "a" / "x.jpg", None), (tmp_path / "a" / "x.png", None)]
    with pytest.raises(DataError, match=r"both would be written as a/x\.png"):
        output_names(SimpleNamespace(items=items, img_dir=tmp_path))
    assert output_names(SimpleNamespace(items=items[:1], img_dir=tmp_path)) == ["a/x.png"]


def test_images_only_is_asked_for_and_the_normal_path_stays_strict(tiny_synth: Path, tmp_path: Path) -> None:
    from masklab.data.datasets.semantic import FolderSegDataset

    kwargs = {"img_suffix": ".png", "classes": ["a", "b"]}
    missing = tmp_path / "no_labels"
    with pytest.raises(DataError, match="ann_dir"):
        FolderSegDataset(tiny_synth / "images" / "val", missing, **kwargs)
    images_only = FolderSegDataset(tiny_synth / "images" / "val", missing, labels=False, **kwargs)
    sample = images_only[0]
    assert sample.semantic is None and "seg_map_path" not in sample.meta.extra
    assert tuple(sample.image.shape) == (3, 64, 64)


def test_format_only_without_a_folder_is_a_config_error(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(TINY, [f"dataset.root={tiny_synth}"], tmp_path / "c.pth")
    code = main(["evaluate", str(TINY), str(ckpt), f"dataset.root={tiny_synth}", "evaluate.format_only=true"])
    assert code == 2
    assert "format_only: true needs output_dir" in _one_error_line(capsys)
