"""``masklab infer``: the ``inference`` section decides how predictions are made; outputs mirror
the input folder; instance results carry their file names and still evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.cli.main import main

TINY = Path(__file__).with_name("configs") / "tiny_fcn.yaml"
TTA = "{scales: [1.0, 1.5], flip: true}"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, checkpoint of the tiny FCN) on 2 + 2 synthetic 64 px images."""
    from masklab.config.assemble import build_dataset, build_model, resolve
    from masklab.data.synthetic import synthesize
    from masklab.engine.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("infer_cli")
    synthesize(root / "data", num_train=2, num_val=2, size=64, seed=0, max_objects=2)
    rc = resolve(TINY, [f"dataset.root={root / 'data'}"])
    torch.manual_seed(0)
    model = build_model(rc, build_dataset(rc, "train").metainfo)
    return root / "data", save_checkpoint(root / "m.pth", {"model": model.state_dict(), "iteration": 0})


def _infer(ckpt: tuple[Path, Path], inp: Path, out: Path, *overrides: str) -> dict[str, bytes]:
    data, path = ckpt
    argv = ["infer", str(TINY), str(path), f"dataset.root={data}", *overrides, "--input", str(inp),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_inference_section_changes_the_predictions_and_evaluate_does_not_override_it(
    ckpt: tuple[Path, Path], tmp_path: Path
) -> None:
    images = ckpt[0] / "images" / "val"
    plain = _infer(ckpt, images, tmp_path / "plain")
    tta = _infer(ckpt, images, tmp_path / "tta", f"inference.tta={TTA}")
    assert plain.keys() == tta.keys() and plain != tta
    # evaluate's TTA is only a fallback: an inference section that says "no TTA" wins
    kept = _infer(ckpt, images, tmp_path / "kept", f"evaluate.tta={TTA}", "inference.tta.scales=[1.0]",
                  "inference.tta.flip=false")  # fmt: skip
    assert kept == plain
    # and a config that leaves inference.tta unset infers as it evaluates
    assert _infer(ckpt, images, tmp_path / "fallback", f"evaluate.tta={TTA}") == tta


def test_outputs_mirror_subfolders_and_skip_hidden_ones(ckpt: tuple[Path, Path], tmp_path: Path) -> None:
    src = ckpt[0] / "images" / "val" / "000000.png"
    for rel in ("a/x.png", "b/x.png", ".ipynb_checkpoints/x.png"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / "in" / rel)
    Image.open(src).convert("RGB").save(tmp_path / "in" / "a" / "x.jpg")
    written = _infer(ckpt, tmp_path / "in", tmp_path / "out")
    names = ["a/x.jpg.png", "a/x.png.png", "b/x.png"]
    assert sorted(written) == sorted([f"pred/{n}" for n in names] + [f"vis/{n}" for n in names])
    assert written["pred/a/x.png.png"] == written["pred/b/x.png"]
    label = np.array(Image.open(tmp_path / "out" / "pred" / "b" / "x.png"))
    assert label.shape == (64, 64)


def test_out_defaults_to_inference_out_dir(ckpt: tuple[Path, Path], tmp_path: Path) -> None:
    data, path = ckpt
    argv = ["infer", str(TINY), str(path), f"dataset.root={data}", f"inference.out_dir={tmp_path / 'o'}",
            "--input", str(data / "images" / "val"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "pred").iterdir()) == ["000000.png", "000001.png"]


def test_instance_results_name_their_files_and_still_evaluate(tmp_path: Path) -> None:
    """Each entry of instances.json carries ``file_name`` (relative to the input folder) beside
    ``image_id`` (the input's index); remapped to the ground truth's ids by file name, the file
    evaluates with ``masklab evaluate coco`` (the extra key is accepted)."""
    from masklab.data.synthetic import synthesize
    from masklab.inference.inferencer import Inferencer
    from tests.cli.test_mask2former_cli import CONFIG
    from tests.cli.test_mask2former_cli import TINY as M2F_TINY

    synthesize(tmp_path / "data", num_train=1, num_val=2, size=64, seed=0, max_objects=2)
    torch.manual_seed(0)
    inf = Inferencer(CONFIG, None, device="cpu", overrides=[*M2F_TINY, f"dataset.root={tmp_path / 'data'}"])
    inf(tmp_path / "data" / "images" / "val", out_dir=tmp_path / "out")
    results = json.loads((tmp_path / "out" / "pred" / "instances.json").read_text())
    assert results and {(r["image_id"], r["file_name"]) for r in results} == {
        (0, "000000.png"),
        (1, "000001.png"),
    }
    gt = tmp_path / "data" / "annotations" / "val.json"
    ids = {im["file_name"]: im["id"] for im in json.loads(gt.read_text())["images"]}
    for r in results:
        r["image_id"] = ids[r["file_name"]]
    (tmp_path / "pred.json").write_text(json.dumps(results))
    argv = [
        "evaluate",
        "coco",
        "--gt",
        str(gt),
        "--pred",
        str(tmp_path / "pred.json"),
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert main(argv) == 0
    assert "AP" in json.loads((tmp_path / "m.json").read_text())
    from pycocotools.coco import COCO

    loaded = COCO(str(gt)).loadRes(str(tmp_path / "pred.json"))
    assert all("file_name" in a for a in loaded.dataset["annotations"])


def test_out_that_is_a_file_is_refused_before_predicting(
    ckpt: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from masklab.inference import inferencer

    data, path = ckpt
    (tmp_path / "taken").write_text("mine")
    monkeypatch.setattr(
        inferencer.Inferencer, "_predict", lambda *a: pytest.fail("predicted before checking --out")
    )
    argv = ["infer", str(TINY), str(path), f"dataset.root={data}", "--input", str(data / "images" / "val"),
            "--out", str(tmp_path / "taken"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [f"error: --out {tmp_path / 'taken'}: is a file; expected a folder to write into"]
    assert (tmp_path / "taken").read_text() == "mine"
