"""MAL through the CLI: train -> infer --boxes -> evaluate in-process, and bad box files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "mal" / "mal_tiny_synthetic-64.yaml")
TINY = [
    "dataset.crop_size=32",
    "model.mask_head_hidden_channel=8",
    "model.mask_head_out_channel=8",
    "model.mask_head_num_convs=2",
    "train.crf_num_iter=2",
    "train.batch_size=2",
    "train.log_interval=1",
]


def _data(root: Path) -> list[str]:
    return [
        f"dataset.train_ann_path={root}/annotations/train.json",
        f"dataset.train_img_dir={root}/images/train",
        f"dataset.val_ann_path={root}/annotations/val.json",
        f"dataset.val_img_dir={root}/images/val",
    ]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny MAL checkpoint (weights only): enough to label."""
    from masklab.config.assemble import resolve
    from masklab.models.mal.build import build_mal_model

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": build_mal_model(resolve(CONFIG, TINY)).state_dict()}, path)
    return path


def _boxes(tmp_path: Path, tiny_synth: Path, edit=None) -> Path:
    raw = json.loads((tiny_synth / "annotations" / "val.json").read_text())
    for i, ann in enumerate(raw["annotations"]):
        ann.pop("segmentation", None)
        ann["score"] = 0.5 + 0.01 * i
    if edit is not None:
        edit(raw)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(raw))
    return path


def _infer(tiny_synth: Path, ckpt: Path, boxes: Path, out: Path, *extra: str) -> int:
    return main(["infer", CONFIG, str(ckpt), *TINY, "--boxes", str(boxes),
                 "--images", str(tiny_synth / "images" / "val"), "--out", str(out), *extra])  # fmt: skip


def test_infer_keeps_every_box_and_score(tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    boxes = _boxes(tmp_path, tiny_synth)
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, boxes, out, "--vis") == 0
    src, got = json.loads(boxes.read_text()), json.loads(out.read_text())
    assert [a["id"] for a in got["annotations"]] == [a["id"] for a in src["annotations"]]
    coco = COCO(str(out))  # loads in pycocotools
    for a, b in zip(src["annotations"], got["annotations"], strict=True):
        assert b["bbox"] == a["bbox"] and b["score"] == a["score"]
        m = coco.annToMask(coco.anns[b["id"]])
        assert b["area"] == float(m.sum()) == float(mask_utils.area(b["segmentation"]))
    assert any((tmp_path / "labels_vis").iterdir())


def _zero(raw):
    raw["annotations"][0]["bbox"] = [3, 3, 0, 5]


def _outside(raw):
    raw["annotations"][0]["bbox"] = [500, 500, 10, 10]


def _category(raw):
    raw["annotations"][0]["category_id"] = 999


def _image(raw):
    raw["images"][0]["file_name"] = "nope.png"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_zero, "expected positive width and height"),
        (_outside, "outside its"),
        (_category, "not among the categories"),
        (_image, "images[id=1].file_name 'nope.png': no such file under"),
    ],
)
def test_bad_boxes_are_one_line_errors_and_no_output(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, message: str
) -> None:
    boxes = _boxes(tmp_path, tiny_synth, edit)
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, boxes, out) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_infer_boxes_under_torchrun_is_one_line(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, _boxes(tmp_path, tiny_synth), out) != 0
    err = capsys.readouterr().err.strip()
    assert "runs in one process; start it without torchrun" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_train_infer_evaluate_round_trip(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    common = [*TINY, *_data(tiny_synth), "dataset.min_obj_size=4"]
    run = ["train", CONFIG, "--work-dir", str(work), "--no-progress", *common,
           "train.checkpoint_interval_unit=step", "train.checkpoint_interval=2", "train.validation_interval=100"]  # fmt: skip
    assert main([*run, "train.max_iters=3"]) == 0
    ckpt = work / "checkpoints" / (work / "checkpoints" / "latest").read_text().strip()
    # Auto-resume: a second call with more iterations continues from the latest checkpoint.
    assert main([*run, "train.max_iters=4"]) == 0
    assert (work / "checkpoints" / "iter_0000004.pth").is_file()
    # Auto-resume from a checkpoint past what the spec asks for: said in one line, nothing trained.
    capsys.readouterr()
    assert main([*run, "train.max_iters=2"]) == 0
    printed = capsys.readouterr().out
    assert (
        "checkpoint already at iteration 4 >= the 2 the spec asks for (train.max_iters=2); nothing trained"
        in printed
    )
    assert "done: 4 iterations" in printed
    assert (work / "checkpoints" / "latest").read_text().strip() == "iter_0000004.pth"
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, ckpt, _boxes(tmp_path, tiny_synth), out) == 0
    metrics = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", CONFIG, str(ckpt), *common, "--out", str(metrics), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mask_iou" in printed and printed.count("size buckets by GT area") == 1
    assert "NaN" not in metrics.read_text() and "NaN" not in (work / "log.jsonl").read_text()  # strict JSON
    got = json.loads(metrics.read_text())["metrics"]
    assert 0.0 <= got["mask_iou"] <= 1.0 and "segm/AP" in got and got["missing"] == 0


def _spec_paths(tiny_synth: Path, boxes: Path, dump: Path) -> list[str]:
    return [f"inference.ann_path={boxes}", f"inference.img_dir={tiny_synth / 'images' / 'val'}",
            f"inference.label_dump_path={dump}"]  # fmt: skip


def test_infer_takes_paths_from_the_spec_inference_section(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """``masklab infer SPEC CKPT`` labels what the TAO spec's inference section names; flags override it."""
    boxes, dump = _boxes(tmp_path, tiny_synth), tmp_path / "dump" / "labels.json"
    spec = [*TINY, *_spec_paths(tiny_synth, boxes, dump)]
    assert main(["infer", CONFIG, str(tiny_ckpt), *spec]) == 0
    src, got = json.loads(boxes.read_text()), json.loads(dump.read_text())
    assert [a["id"] for a in got["annotations"]] == [a["id"] for a in src["annotations"]]
    flag_out = tmp_path / "flag.json"
    dump.unlink()
    assert main(["infer", CONFIG, str(tiny_ckpt), *spec, "--out", str(flag_out)]) == 0
    assert flag_out.is_file() and not dump.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "a MAL config labels boxes: use --boxes BOXES.json --images DIR --out LABELS.json "
             "(or the spec's inference.ann_path / img_dir / label_dump_path)"),
        (["--out", "x.json"], "a MAL config labels boxes: use --boxes BOXES.json --images DIR "
                              "(or the spec's inference.ann_path / img_dir)"),
        (["--input", "imgs", "--out", "x"], "--input imgs: a MAL config labels boxes: use --boxes BOXES.json"),
    ],
)  # fmt: skip
def test_mal_spec_without_boxes_names_the_missing_keys(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["infer", CONFIG, str(tiny_ckpt), *TINY, *extra]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.fixture(scope="module")
def mal_ckpt_with_config(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> Path:
    """A MAL checkpoint that stores its config, as training writes it (payload key ``config``)."""
    from masklab.config.assemble import resolve

    path = tmp_path_factory.mktemp("ckpt") / "mal_with_config.pth"
    torch.save({**torch.load(tiny_ckpt), "config": resolve(CONFIG, TINY).to_dict()}, path)
    return path


def test_mal_checkpoint_with_a_semantic_config_names_both_tasks(
    tiny_synth: Path, mal_ckpt_with_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import DEMO_CONFIG

    args = ["infer", str(DEMO_CONFIG), str(mal_ckpt_with_config), "--input",
            str(tiny_synth / "images" / "val"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert "'task: mal' checkpoint" in err and "'task: semantic' config" in err, err
    assert "--boxes BOXES.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_semantic_checkpoint_with_a_mal_config_names_both_tasks(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "semantic.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"task": "semantic"}}, ckpt)
    out = tmp_path / "labels.json"
    assert _infer(tiny_synth, ckpt, _boxes(tmp_path, tiny_synth), out) != 0
    err = capsys.readouterr().err.strip()
    assert "'task: semantic' checkpoint" in err and "'task: mal' config" in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_evaluate_and_resume_with_a_mal_checkpoint_and_a_semantic_config_name_both_tasks(
    command: str, tiny_synth: Path, mal_ckpt_with_config: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Said "weights do not fit (missing 37 ...)" (evaluate) or loaded and failed later (resume)."""
    from .conftest import DEMO_CONFIG

    common = [f"dataset.root={tiny_synth}", "--no-progress"]
    if command == "evaluate":
        args = ["evaluate", str(DEMO_CONFIG), str(mal_ckpt_with_config), *common]
    else:
        args = ["train", str(DEMO_CONFIG), *common, "--work-dir", str(tmp_path / "w"),
                "--resume", str(mal_ckpt_with_config)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "'task: mal' checkpoint" in err and "'task: semantic' config" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["infer", "train"])
def test_a_mal_run_latest_pointer_with_a_semantic_config_names_both_tasks(
    command: str, tiny_synth: Path, mal_ckpt_with_config: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``checkpoints/latest`` stands for a checkpoint everywhere: the task check reads what it names
    (it read the pointer file itself, found no task, and infer said "weights do not fit ...")."""
    from .conftest import DEMO_CONFIG

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(mal_ckpt_with_config, folder / "iter_0000004.pth")
    (folder / "latest").write_text("iter_0000004.pth\n")
    latest = str(folder / "latest")
    if command == "infer":
        args = ["infer", str(DEMO_CONFIG), latest, "--input", str(tiny_synth / "images" / "val"),
                "--out", str(tmp_path / "out")]  # fmt: skip
    else:
        args = ["train", str(DEMO_CONFIG), f"dataset.root={tiny_synth}", "--no-progress",
                "--work-dir", str(tmp_path / "out"), "--resume", latest]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "'task: mal' checkpoint" in err and "'task: semantic' config" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_swapped_image_size_is_named_before_the_box(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A width/height swapped in images[] puts boxes outside the declared image: the size is the error."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (160, 96), (90, 120, 30)).save(images / "a.png")  # 160 wide, 96 high
    raw = {
        "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 160}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [110, 10, 30, 30]}],
    }
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(raw))
    out = tmp_path / "labels.json"
    args = ["infer", CONFIG, str(tiny_ckpt), *TINY, "--boxes", str(boxes), "--images", str(images),
            "--out", str(out)]  # fmt: skip
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert f"images[0] (id=1): width/height 96x160 but the file {images / 'a.png'} is 160x96" in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_resume_flag_on_an_auto_resumed_mal_run_loads_the_checkpoint_once(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A MAL trainer auto-resumes when built (TAO); `--resume` on top loaded the same file again and
    said so twice (session 10)."""
    work = tmp_path / "work"
    run = ["train", CONFIG, "--work-dir", str(work), "--no-progress", *TINY, *_data(tiny_synth),
           "dataset.min_obj_size=4", "train.checkpoint_interval_unit=step", "train.checkpoint_interval=1",
           "train.validation_interval=100"]  # fmt: skip
    assert main([*run, "train.max_iters=1"]) == 0
    capsys.readouterr()
    assert main([*run, "train.max_iters=2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("resumed from") == 1, out
    assert (work / "checkpoints" / "iter_0000002.pth").is_file()


def test_vis_folder_that_is_a_file_is_refused_before_labeling(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--vis`` with ``<out stem>_vis`` an existing file wrote the labels, then failed (exit 2) on
    the overlays: a failed command left its output behind."""
    out = tmp_path / "labels.json"
    (tmp_path / "labels_vis").write_text("not a folder")
    assert _infer(tiny_synth, tiny_ckpt, _boxes(tmp_path, tiny_synth), out, "--vis") == 2
    err = capsys.readouterr().err.strip()
    assert f"--vis {tmp_path / 'labels_vis'}: is a file" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_failed_overlay_write_leaves_no_labels_file(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A full disk on the overlays (``ulimit -f``) was a traceback, and left the labels file and
    an empty ``_vis`` folder behind."""
    import errno

    import masklab.data.io as io

    def full_disk(path, array):
        raise OSError(errno.EFBIG, "File too large", str(path))

    monkeypatch.setattr(io, "write_png_atomic", full_disk)
    out = tmp_path / "run" / "labels.json"
    assert _infer(tiny_synth, tiny_ckpt, _boxes(tmp_path, tiny_synth), out, "--vis") == 2
    err = capsys.readouterr().err.strip()
    assert f"{out.parent}: could not write the labels (File too large)" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_out_folder_is_refused_before_labeling(
    tiny_synth: Path, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """An ``--out`` that is a folder was found only by the final rename, after the whole labeling."""
    import masklab.cli.infer_boxes as infer_boxes

    def no_labeling(*args, **kwargs):  # the check must come first
        raise AssertionError("labeled before checking --out")

    monkeypatch.setattr(infer_boxes, "label_boxes", no_labeling)
    out = tmp_path / "dir"
    out.mkdir()
    assert _infer(tiny_synth, tiny_ckpt, _boxes(tmp_path, tiny_synth), out) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {out}: is a folder" in err and len(err.splitlines()) == 1, err


def test_overlays_mirror_subfolders_and_read_16_bit_images(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``a/x.png`` and ``b/x.png`` were both written as ``<stem>_vis/x.png`` (one lost, "2 overlays"
    printed), and a 16-bit PNG's overlay was PIL's saturated conversion (nearly all white)."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    entries = []
    for i, name in enumerate(["a/x.png", "b/x.png", "deep16.png"]):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        if name == "deep16.png":
            Image.fromarray(rng.integers(0, 32768, (24, 24), dtype=np.uint16)).save(images / name)
        else:
            Image.new("RGB", (24, 24), (40 + 100 * i, 90, 30)).save(images / name)
        entries.append({"id": i + 1, "file_name": name, "width": 24, "height": 24})
    raw = {
        "images": entries,
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 6, 6]} for i in range(3)
        ],
    }
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(raw))
    out = tmp_path / "labels.json"
    args = ["infer", CONFIG, str(tiny_ckpt), *TINY, "--boxes", str(boxes), "--images", str(images),
            "--out", str(out), "--vis"]  # fmt: skip
    assert main(args) == 0
    vis = tmp_path / "labels_vis"
    assert sorted(p.relative_to(vis).as_posix() for p in vis.rglob("*.png")) == [
        "a/x.png",
        "b/x.png",
        "deep16.png",
    ]
    a, b = (np.asarray(Image.open(vis / n)) for n in ("a/x.png", "b/x.png"))
    assert a[20, 20, 0] == 40 and b[20, 20, 0] == 140  # outside the box: each image's own pixels
    deep = np.asarray(Image.open(vis / "deep16.png"))
    assert deep[12:, 12:].mean() < 140  # top 8 bits of 0..32767: mean ~64, not saturated to 255
