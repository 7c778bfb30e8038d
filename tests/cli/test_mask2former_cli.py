"""Mask2Former with attribute heads from its config: build-time checks, an empty-image step, and
train -> evaluate -> infer through the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main
from masklab.config.assemble import build_model, resolve
from masklab.data.meta import AttributeMeta, DatasetMeta
from masklab.errors import ConfigError
from masklab.structures import Batch, Instances, SampleMeta

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "mask2former" / "mask2former_r18_1xb8-1000i_synthetic-128x128.yaml")
TINY = [
    "model.pixel_decoder.conv_dim=32",
    "model.pixel_decoder.mask_dim=32",
    "model.pixel_decoder.num_heads=2",
    "model.pixel_decoder.ffn_dim=32",
    "model.decoder.num_queries=5",
    "model.decoder.hidden_dim=32",
    "model.decoder.num_layers=2",
    "model.decoder.nheads=2",
    "model.decoder.dim_feedforward=32",
    "model.num_points=64",
]
META = DatasetMeta(
    classes=("circle", "square", "triangle"),
    attributes=(
        AttributeMeta("color", ("red", "green", "blue", "yellow")),
        AttributeMeta("pattern", ("solid", "striped", "dotted")),
    ),
)


def test_attributes_disagreeing_with_the_dataset_is_one_config_error() -> None:
    meta = DatasetMeta(classes=META.classes, attributes=(AttributeMeta("color", ("red", "green")),))
    with pytest.raises(ConfigError, match=r"model.attributes: config declares \[color:4, pattern:3\]"):
        build_model(resolve(CONFIG, TINY), meta)


def test_test_topk_comes_from_evaluate_max_dets() -> None:
    model = build_model(resolve(CONFIG, [*TINY, "evaluate.max_dets=7"]), META)
    assert model.test_topk == 7
    with pytest.raises(ConfigError, match="model.test_topk: config says 5 but evaluate.max_dets is 7"):
        build_model(resolve(CONFIG, [*TINY, "evaluate.max_dets=7", "model.test_topk=5"]), META)


@pytest.mark.parametrize(("max_dets", "coco"), [(1, (1,)), (7, (1, 7)), (10, (1, 10)), (20, (1, 10, 20))])
def test_evaluator_max_dets_follow_a_small_top_k(max_dets: int, coco: tuple[int, ...]) -> None:
    """``evaluate.max_dets`` <= 10 is valid (>= 1); the evaluator's maxDets used to be (1, 10, 7), refused."""
    from types import SimpleNamespace

    from masklab.config.assemble import build_evaluator
    from masklab.data.coco import parse_coco

    attributes = [{"name": a.name, "values": list(a.values)} for a in META.attributes]
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(META.classes)]
    gt = parse_coco({"images": [], "annotations": [], "categories": categories, "attributes": attributes})
    rc = resolve(CONFIG, [*TINY, f"evaluate.max_dets={max_dets}"])
    evaluator = build_evaluator(rc, SimpleNamespace(coco=gt, metainfo=META))
    assert evaluator.params[0].max_dets == coco


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["evaluate.tta.flip=true"], "evaluate.tta / inference.tta: scales [1.0], flip True"),
        (["evaluate.tta.scales=[0.5,1.0]"], "scales [0.5, 1.0]"),
        (["evaluate.mode=slide", "evaluate.crop_size=[32,32]", "evaluate.stride=[16,16]"], "'slide'"),
    ],
)
def test_sliding_windows_and_tta_are_refused_not_ignored(overrides: list[str], needle: str) -> None:
    from masklab.config.assemble import apply_eval_settings

    rc = resolve(CONFIG, [*TINY, *overrides])
    model = build_model(rc, META)
    with pytest.raises(ConfigError, match="not supported by Mask2Former") as err:
        apply_eval_settings(model, rc)
    assert needle in str(err.value)
    apply_eval_settings(model, resolve(CONFIG, TINY))  # whole images, no TTA: fine
    assert model.test_mode == "instance"


def test_a_batch_with_an_empty_image_trains() -> None:
    torch.manual_seed(0)
    model = build_model(resolve(CONFIG, TINY), META)
    names = ("color", "pattern")
    masks = torch.zeros((1, 64, 64), dtype=torch.bool)
    masks[0, 10:30, 12:40] = True
    full = Instances(
        masks=masks,
        boxes=torch.tensor([[12.0, 10.0, 40.0, 30.0]]),
        labels=torch.tensor([1]),
        attributes={"color": torch.tensor([2]), "pattern": torch.tensor([0])},
    )
    metas = [
        SampleMeta(image_id=i, ori_shape=(64, 64), img_shape=(64, 64), pad_shape=(64, 64)) for i in (1, 2)
    ]
    batch = Batch(
        images=torch.randn(2, 3, 64, 64), metas=metas, instances=[Instances.empty(64, 64, names), full]
    )
    losses = model(batch, mode="loss")
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert {"loss_attr_color", "loss_attr_pattern"} <= set(losses)


@pytest.mark.slow
def test_train_evaluate_infer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from masklab.data.synthetic import synthesize

    data, work = tmp_path / "data", tmp_path / "work"
    synthesize(data, num_train=4, num_val=2, size=64, seed=0)
    common = [*TINY, f"dataset.root={data}"]
    run = ["train.max_iters=3", "train.val_interval=3", "train.checkpoint_interval=3", "train.log_interval=1",
           "train.batch_size=2", "train.num_workers=0", f"runtime.work_dir={work}"]  # fmt: skip
    assert main(["train", CONFIG, *common, *run, "--no-progress"]) == 0
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert any("loss_attr_color" in json.dumps(r) for r in records)
    ckpt = work / "checkpoints" / "iter_0000003.pth"
    assert ckpt.is_file()
    out = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", CONFIG, str(ckpt), *common, "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("101-point interpolation") == 1  # how the metrics were computed, said once
    metrics = json.loads(out.read_text())
    flat = json.dumps(metrics)
    for key in ("segm/AP", "attr/color/acc", "attr/pattern/f1", "joint/AP"):
        assert key in flat
    infer_dir = tmp_path / "infer"
    assert main(["infer", CONFIG, str(ckpt), *common, "--input", str(data / "images" / "val"),
                 "--out", str(infer_dir)]) == 0  # fmt: skip
    dets = json.loads((infer_dir / "pred" / "instances.json").read_text())
    assert dets and len(dets) <= 2 * 20  # test_topk = evaluate.max_dets = 20 per image
    assert set(dets[0]) >= {
        "image_id",
        "category_id",
        "score",
        "segmentation",
        "attributes",
        "attribute_scores",
    }
    assert set(dets[0]["attributes"]) == {"color", "pattern"}
    assert len(list((infer_dir / "vis").glob("*.png"))) == 2
    # --image-ids: results carry the ground truth's ids, so `evaluate coco` scores them as evaluate did
    gt = data / "annotations" / "val.json"
    ided = tmp_path / "infer_ids"
    assert main(["infer", CONFIG, str(ckpt), *common, "--input", str(data / "images" / "val"),
                 "--out", str(ided), "--image-ids", str(gt)]) == 0  # fmt: skip
    by_name = {im["file_name"].split("/")[-1]: im["id"] for im in json.loads(gt.read_text())["images"]}
    ided_dets = json.loads((ided / "pred" / "instances.json").read_text())
    assert ided_dets and all(d["image_id"] == by_name[d["file_name"]] for d in ided_dets)
    scored = tmp_path / "coco.json"
    assert main(["evaluate", "coco", "--gt", str(gt), "--pred", str(ided / "pred" / "instances.json"),
                 "--max-dets", "1", "10", "20", "--out", str(scored)]) == 0  # fmt: skip
    assert json.loads(scored.read_text())["AP"] == pytest.approx(metrics["metrics"]["segm/AP"], abs=1e-9)
