"""Bad input across the CLI: every case is one ``error:`` line naming the file/key/value, a non-zero
exit, no traceback and no half-written output.

Each case is ``(id, setup, needle)``: ``setup(env)`` plants one mistake in a private copy of a tiny
synthetic dataset and returns the argv; ``needle`` must appear in the error line.
"""

from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.cli.main import main

TINY = Path(__file__).with_name("configs") / "tiny_fcn.yaml"


@dataclass
class Env:
    """A private workspace: ``data`` (synthetic copy), ``work`` (run folder, absent), ``ckpt`` (valid checkpoint)."""

    tmp: Path
    data: Path
    ckpt: Path

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    def cfg(self, text: str = "", name: str = "cfg.yaml") -> Path:
        """A config file: the tiny config plus ``text`` appended."""
        path = self.tmp / name
        path.write_text(TINY.read_text() + "\n" + text)
        return path

    def train(self, *extra: str, config: Path | None = None) -> list[str]:
        return ["train", str(config or TINY), f"dataset.root={self.data}", "--work-dir", str(self.work),
                "--no-progress", *extra]  # fmt: skip

    def coco(self, mutate: Callable[[dict], object] | None = None, raw: str | None = None) -> list[str]:
        """Train a config whose datasets read a (broken) COCO file."""
        ann = self.tmp / "ann.json"
        if raw is not None:
            ann.write_text(raw)
        else:
            data = json.loads((self.data / "annotations" / "train.json").read_text())
            if mutate is not None:
                mutate(data)
            ann.write_text(json.dumps(data))
        node = f"{{type: CocoInstanceDataset, ann_file: {ann}, img_dir: {self.data / 'images/train'}}}"
        return self.train(f"dataset.train={node}", f"dataset.val={node}")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from masklab.config.assemble import build_dataset, build_model, resolve
    from masklab.engine.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad_input")
    from masklab.data.synthetic import synthesize

    synthesize(root / "data", num_train=2, num_val=2, size=32, seed=0, max_objects=2)
    rc = resolve(TINY, [f"dataset.root={root / 'data'}"])
    model = build_model(rc, build_dataset(rc, "train").metainfo)
    ckpt = save_checkpoint(root / "good.pth", {"model": model.state_dict(), "iteration": 0})
    return root / "data", ckpt


@pytest.fixture
def env(base: tuple[Path, Path], tmp_path: Path) -> Env:
    data = tmp_path / "data"
    shutil.copytree(base[0], data)
    return Env(tmp_path, data, base[1])


def _img(env: Env, split: str = "train", k: int = 0) -> Path:
    return env.data / "images" / split / f"{k:06d}.png"


def _label(env: Env, split: str = "train", k: int = 0) -> Path:
    return env.data / "labels" / split / f"{k:06d}.png"


def _set_label(
    env: Env, value: int | None = None, rgb: bool = False, size: tuple[int, int] | None = None
) -> None:
    path = _label(env)
    arr = np.array(Image.open(path))
    if value is not None:
        arr[0, 0] = value
        Image.fromarray(arr).save(path)
    elif rgb:
        Image.fromarray(np.stack([arr] * 3, -1)).save(path)
    elif size is not None:
        Image.fromarray(arr).resize(size).save(path)


def _pickle_ckpt(env: Env) -> Path:
    path = env.tmp / "evil.pth"
    torch.save({"model": {}, "obj": Env(env.tmp, env.data, env.ckpt)}, path)
    return path


def _other_model_ckpt(env: Env) -> Path:
    payload = torch.load(env.ckpt, weights_only=True)
    state = {
        k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if "conv_seg" in k else v)
        for k, v in payload["model"].items()
    }
    path = env.tmp / "other.pth"
    torch.save({"model": state}, path)
    return path


def _evaluate(env: Env, ckpt: Path | str, *extra: str) -> list[str]:
    return [
        "evaluate",
        str(TINY),
        str(ckpt),
        f"dataset.root={env.data}",
        "--out",
        str(env.tmp / "m.json"),
        "--no-progress",
        *extra,
    ]


def _infer(env: Env, ckpt: Path | str, inp: Path | str) -> list[str]:
    return [
        "infer",
        str(TINY),
        str(ckpt),
        f"dataset.root={env.data}",
        "--input",
        str(inp),
        "--out",
        str(env.tmp / "out"),
        "--device",
        "cpu",
    ]


def _coco_eval(env: Env, pred: str) -> list[str]:
    (env.tmp / "pred.json").write_text(pred)
    return ["evaluate", "coco", "--gt", str(env.data / "annotations/val.json"), "--pred", str(env.tmp / "pred.json"),
            "--out", str(env.tmp / "m.json")]  # fmt: skip


def _garbage_rle_gt(env: Env) -> list[str]:
    """``evaluate coco`` whose ground truth has a corrupt RLE string (the prediction file is fine)."""
    gt = json.loads((env.data / "annotations/val.json").read_text())
    image = gt["images"][0]
    gt["annotations"][0]["segmentation"] = {"size": [image["height"], image["width"]], "counts": "!!!!zz"}
    (env.tmp / "gt.json").write_text(json.dumps(gt))
    (env.tmp / "pred.json").write_text("[]")
    return ["evaluate", "coco", "--gt", str(env.tmp / "gt.json"), "--pred", str(env.tmp / "pred.json"),
            "--out", str(env.tmp / "m.json")]  # fmt: skip


def _garbage_rle_pred(env: Env) -> list[str]:
    gt = json.loads((env.data / "annotations/val.json").read_text())
    image, cat = gt["images"][0], gt["categories"][0]
    det = {"image_id": image["id"], "category_id": cat["id"], "bbox": [0, 0, 2, 2], "score": 0.5,
           "segmentation": {"size": [image["height"], image["width"]], "counts": "!!!!zz"}}  # fmt: skip
    return _coco_eval(env, json.dumps([det]))


def _val_classes_differ(env: Env) -> list[str]:
    """Train on the synthetic classes, validate the same files read with other class names."""
    classes = json.loads((env.data / "meta.json").read_text())["classes"]
    node = (f"{{type: FolderSegDataset, img_dir: {env.data / 'images/val'}, ann_dir: {env.data / 'labels/val'}, "
            f"img_suffix: .png, classes: [{', '.join(['other', *classes[1:]])}]}}")  # fmt: skip
    return env.train(f"dataset.val={node}")


def _ann(i: int, **kw: object) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        d["annotations"][i].update(kw)

    return mutate


def _none(_: object) -> None:
    """Swallow a value so ``_none(path.write_text(...)) or argv`` reads as 'do this, then run argv'."""


Case = tuple[str, Callable[[Env], list[str]], str]
CASES: list[Case] = [
    # ------------------------------------------------------------------ config files and overrides
    ("config_missing", lambda e: ["train", str(e.tmp / "nope.yaml")], "nope.yaml: config file not found"),
    ("config_invalid_yaml", lambda e: e.train(config=e.cfg("train: [unclosed")), "cfg.yaml"),
    (
        "config_empty",
        lambda e: _none(e.cfg().write_text("")) or ["train", str(e.tmp / "cfg.yaml")],
        "cfg.yaml",
    ),
    ("config_unknown_top_key", lambda e: e.train(config=e.cfg("trian: {}")), "trian"),
    ("config_unknown_nested_key", lambda e: e.train("train.optim.lrr=0.1"), "lrr"),
    ("config_wrong_type", lambda e: e.train("train.batch_size=abc"), "train.batch_size"),
    ("config_out_of_range_value", lambda e: e.train("train.batch_size=0"), "batch_size"),
    ("config_bad_override_syntax", lambda e: e.train("train.batch_size"), "train.batch_size"),
    ("config_both_iters_and_epochs", lambda e: e.train("train.max_epochs=2"), "max_epochs"),
    (
        "config_python_tag",
        lambda e: e.train(config=e.cfg("evil: !!python/object/apply:os.system ['true']")),
        "cfg.yaml",
    ),
    (
        "config_pipeline_entry_without_type",
        lambda e: e.train("dataset.train.pipeline=[{crop_size: [32, 32]}]"),
        "dataset.train.pipeline.0: missing 'type'",
    ),
    (
        "config_pipeline_type_glued_to_its_value",
        lambda e: e.train("dataset.train.pipeline=[{type:RandomCrop, crop_size: [32, 32]}]"),
        "write 'type: RandomCrop'",
    ),
    ("config_unknown_type", lambda e: e.train("model.backbone.type=NoSuchBackbone"), "NoSuchBackbone"),
    ("config_unknown_timm_model", lambda e: e.train("model.backbone.model_name=no_such_net"), "no_such_net"),
    ("config_unknown_head_key", lambda e: e.train("model.decode_head.chanels=8"), "chanels"),
    ("config_unknown_task", lambda e: e.train("task=segmentz"), "segmentz"),
    (
        "config_missing_base",
        lambda e: e.train(config=e.cfg("_base_: [missing_base.yaml]")),
        "missing_base.yaml",
    ),
    # No machine has 65 GPUs: the same one-line error with or without CUDA.
    ("config_no_cuda", lambda e: e.train("runtime.device=cuda:64"), "runtime.device"),
    ("config_unknown_strategy", lambda e: e.train("runtime.strategy=deepspeed"), "deepspeed"),
    ("config_load_from_missing", lambda e: e.train(f"train.load_from={e.tmp / 'w.pth'}"), "w.pth"),
    # Evaluation settings fail before training, not at the first validation.
    ("config_tta_no_scales", lambda e: e.train("evaluate.tta.scales=[]"), "<override>: evaluate.tta.scales"),
    (
        "config_tta_zero_scale",
        lambda e: e.train("evaluate.tta.scales=[0]"),
        "<override>: evaluate.tta.scales",
    ),
    ("config_eval_zero_stride", lambda e: e.train("evaluate.stride=[0,0]"), "<override>: evaluate.stride"),
    (
        "config_errors_in_two_sections",
        lambda e: e.train("model.decode_head.chanels=1", "train.max_iter=3"),
        "did you mean 'channels'?; <override>: train.max_iter: unknown key",
    ),
    # ------------------------------------------------------------------ semantic data
    ("data_root_missing", lambda e: e.train(f"dataset.root={e.tmp / 'nodata'}"), "nodata"),
    # 32 px images reach the stride-32 stage as 1x1 maps: the GroupNorm head sees one value per group.
    ("data_too_small_for_norm", lambda e: e.train("train.batch_size=1"), "1 image(s) of 32x32"),
    (
        "data_meta_invalid_json",
        lambda e: _none((e.data / "meta.json").write_text("{oops")) or e.train(),
        "meta.json",
    ),
    (
        "data_truncated_image",
        lambda e: _none(_img(e).write_bytes(_img(e).read_bytes()[:50])) or e.train(),
        "000000.png",
    ),
    (
        "data_corrupt_image",
        lambda e: _none(_img(e).write_bytes(b"not a png at all" * 8)) or e.train(),
        "000000.png",
    ),
    ("data_label_out_of_range", lambda e: _set_label(e, value=42) or e.train(), "42"),
    ("data_label_rgb", lambda e: _set_label(e, rgb=True) or e.train(), "000000.png"),
    ("data_label_size_mismatch", lambda e: _set_label(e, size=(16, 16)) or e.train(), "000000.png"),
    ("data_label_missing", lambda e: _label(e).unlink() or e.train(), "000000.png"),
    # ------------------------------------------------------------------ COCO data
    ("coco_invalid_json", lambda e: e.coco(raw='{"images": ['), "ann.json"),
    ("coco_missing_key", lambda e: e.coco(lambda d: d.pop("annotations")), "annotations"),
    ("coco_wrong_type", lambda e: e.coco(lambda d: d.update(images={})), "images"),
    ("coco_unknown_category", lambda e: e.coco(_ann(0, category_id=99)), "99"),
    ("coco_attribute_out_of_range", lambda e: e.coco(_ann(0, attributes={"color": 9})), "color"),
    ("coco_unknown_attribute", lambda e: e.coco(_ann(0, attributes={"size": 1})), "size"),
    ("coco_degenerate_box", lambda e: e.coco(_ann(0, bbox=[1, 1, 0, 0])), "id=1"),
    ("coco_for_semantic_model", lambda e: e.coco(), "no semantic label maps"),
    ("coco_empty_polygon", lambda e: e.coco(_ann(0, segmentation=[])), "segmentation"),
    (
        "coco_duplicate_id",
        lambda e: e.coco(lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"])),
        "id",
    ),
    ("coco_dangling_image", lambda e: e.coco(_ann(0, image_id=777)), "777"),
    (
        "coco_corrupt_rle",
        lambda e: e.coco(_ann(0, segmentation={"size": [32, 32], "counts": "!!!!zz"})),
        "annotation id=1: field 'segmentation.counts'",
    ),
    (
        "coco_collinear_polygon",
        lambda e: e.coco(_ann(0, segmentation=[[10, 10, 20, 20, 30, 30]])),
        "zero area",
    ),
    ("coco_iscrowd_string", lambda e: e.coco(_ann(0, iscrowd="0")), "field 'iscrowd' is '0'"),
    (
        "coco_missing_image_file",
        lambda e: e.coco(lambda d: d["images"][0].update(file_name="nope.png")),
        ".file_name 'nope.png': no such file under",
    ),
    (
        "coco_missing_file_name",
        lambda e: e.coco(lambda d: d["images"][0].pop("file_name")),
        "missing 'file_name'",
    ),
    (
        "coco_duplicate_category_name",
        lambda e: e.coco(lambda d: d["categories"][1].update(name=d["categories"][0]["name"])),
        "expected unique category names",
    ),
    ("data_val_classes_differ", _val_classes_differ, "label 0 is"),
    # ------------------------------------------------------------------ work dir
    (
        "workdir_under_file",
        lambda e: (
            _none((e.tmp / "f").write_text("x"))
            or ["train", str(TINY), f"dataset.root={e.data}", "--work-dir", str(e.tmp / "f" / "run")]
        ),
        "run",
    ),
    ("resume_without_checkpoint", lambda e: e.train("--resume"), "no checkpoint"),
    (
        "resume_from_text_file",
        lambda e: _none((e.tmp / "t.pth").write_text("hello")) or e.train("--resume", str(e.tmp / "t.pth")),
        "t.pth",
    ),
    # ------------------------------------------------------------------ checkpoints
    ("evaluate_missing_checkpoint", lambda e: _evaluate(e, e.tmp / "none.pth"), "none.pth"),
    ("evaluate_truncated_checkpoint", lambda e: _evaluate(e, _truncated(e)), "cut.pth"),
    ("evaluate_pickled_object", lambda e: _evaluate(e, _pickle_ckpt(e)), "evil.pth"),
    ("evaluate_wrong_model", lambda e: _evaluate(e, _other_model_ckpt(e)), "conv_seg"),
    ("infer_missing_input", lambda e: _infer(e, e.ckpt, e.tmp / "noimg"), "noimg"),
    # The 32 px image meets the GroupNorm head as a 1x1 map at stride 32 (as in data_too_small_for_norm).
    ("infer_too_small_for_norm", lambda e: _infer(e, e.ckpt, _img(e)), "000000.png (32x32): too small"),
    (
        "infer_wrong_model",
        lambda e: _infer(e, _other_model_ckpt(e), _img(e)),
        "other.pth: weights do not fit",
    ),
    ("infer_opacity_above_one", lambda e: [*_infer(e, e.ckpt, _img(e)), "--opacity", "2"], "--opacity: 2.0"),
    ("infer_opacity_negative", lambda e: [*_infer(e, e.ckpt, _img(e)), "--opacity", "-1"], "[0, 1]"),
    (
        "infer_no_out",
        lambda e: ["infer", str(TINY), str(e.ckpt), f"dataset.root={e.data}", "--input", str(_img(e))],
        "--out DIR is required",
    ),
    ("infer_missing_checkpoint", lambda e: _infer(e, e.tmp / "none.pth", _img(e)), "none.pth"),
    (
        "infer_corrupt_input",
        lambda e: _none(_img(e).write_bytes(b"\x89PNG garbage")) or _infer(e, e.ckpt, _img(e)),
        "000000.png",
    ),
    # ------------------------------------------------------------------ evaluate coco / tools
    (
        "evaluate_coco_missing_gt",
        lambda e: ["evaluate", "coco", "--gt", str(e.tmp / "gt.json"), "--pred", str(e.tmp / "p.json")],
        "gt.json",
    ),
    ("evaluate_coco_invalid_pred", lambda e: _coco_eval(e, "[{"), "pred.json"),
    ("evaluate_coco_pred_not_list", lambda e: _coco_eval(e, '{"a": 1}'), "pred.json"),
    ("evaluate_coco_gt_corrupt_rle", _garbage_rle_gt, "gt.json: annotation id="),
    (
        "evaluate_coco_pred_corrupt_rle",
        _garbage_rle_pred,
        "pred.json: result [0]: field 'segmentation.counts'",
    ),
    (
        "evaluate_coco_pred_unknown_image",
        lambda e: _coco_eval(
            e,
            json.dumps(
                [
                    {
                        "image_id": 999,
                        "category_id": 1,
                        "bbox": [0, 0, 2, 2],
                        "score": 0.5,
                        "segmentation": {"size": [32, 32], "counts": "PPP1"},
                    }
                ]
            ),
        ),
        "999",
    ),
    (
        "synth_negative_count",
        lambda e: ["data", "synth", "--out", str(e.tmp / "s"), "--num-train", "-1"],
        "num_train=-1",
    ),
    (
        "doctor_missing_config",
        lambda e: ["doctor", str(e.tmp / "nope.yaml"), "--work-dir", str(e.work)],
        "nope.yaml",
    ),
]


def _truncated(env: Env) -> Path:
    path = env.tmp / "cut.pth"
    path.write_bytes(env.ckpt.read_bytes()[:1000])
    return path


@pytest.mark.parametrize(("setup", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(
    env: Env, setup: Callable[[Env], list[str]], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = setup(env)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception:  # noqa: BLE001
        pytest.fail("traceback instead of one line:\n" + traceback.format_exc())
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    # No half-written output: no checkpoint, no temporary files, no metrics or predictions.
    written = [p for p in env.tmp.rglob("*") if p.is_file() and not p.is_relative_to(env.data)]
    assert not [p for p in written if p.suffix == ".tmp" or "checkpoints" in p.parts], written
    assert not (env.tmp / "m.json").exists() and not (env.tmp / "out").exists()


def test_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
