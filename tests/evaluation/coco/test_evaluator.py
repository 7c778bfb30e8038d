"""CocoEvaluator fed batch by batch, the results writer round trip, attributes and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from masklab.cli import evaluate_coco
from masklab.config.registries import EVALUATORS
from masklab.data.coco import parse_coco
from masklab.data.coco.results import load_coco_results, write_prediction_results
from masklab.evaluation.coco.evaluator import CocoEvaluator
from masklab.evaluation.coco.synthetic_case import random_coco_case
from masklab.structures import AttributePrediction, Batch, InstancePrediction, SampleMeta

from .pycoco_reference import pycoco_eval, stats_dict


def _predictions(gt_dict: dict, dets: list[dict]) -> list[InstancePrediction]:
    """The detections of a case as InstancePredictions (contiguous labels, attributes)."""
    cat_ids = sorted(c["id"] for c in gt_dict["categories"])
    preds = []
    for im in gt_dict["images"]:
        mine = [d for d in dets if d["image_id"] == im["id"]]
        masks = np.zeros((len(mine), im["height"], im["width"]), dtype=bool)
        for k, d in enumerate(mine):
            masks[k] = mask_utils.decode(
                {"size": d["segmentation"]["size"], "counts": d["segmentation"]["counts"].encode()}
            )
        attrs = {
            n: AttributePrediction(
                torch.tensor([d["attributes"][n] for d in mine], dtype=torch.int64),
                torch.tensor([d["attribute_scores"][n] for d in mine]),
            )
            for n in ("color", "shape")
        }
        preds.append(
            InstancePrediction(
                masks=torch.from_numpy(masks),
                boxes=torch.zeros((len(mine), 4)),
                labels=torch.tensor([cat_ids.index(d["category_id"]) for d in mine], dtype=torch.int64),
                scores=torch.tensor([d["score"] for d in mine], dtype=torch.float64),
                meta=SampleMeta(image_id=im["id"]),
                attributes=attrs,
            )
        )
    return preds


def _batch(n: int) -> Batch:
    return Batch(images=torch.zeros((n, 3, 2, 2)), metas=[SampleMeta() for _ in range(n)])


def test_evaluator_equals_pycocotools_on_written_file(tmp_path: Path) -> None:
    gt_dict, dets = random_coco_case(11, num_images=6, attributes=True)
    gt = parse_coco(gt_dict)
    preds = _predictions(gt_dict, dets)
    ev = EVALUATORS.get("CocoEvaluator")(gt, iou_types=("segm", "bbox"))
    for i in range(0, len(preds), 4):
        ev.process(_batch(len(preds[i : i + 4])), preds[i : i + 4])
    metrics = ev.compute()
    # Writing the same predictions and scoring the file with pycocotools gives the same numbers.
    out = tmp_path / "res.json"
    write_prediction_results(out, preds, gt.category_ids, gt.attributes)
    written = json.loads(out.read_text())
    assert set(written[0]) >= {
        "image_id",
        "category_id",
        "bbox",
        "score",
        "segmentation",
        "attributes",
        "attribute_scores",
    }
    for iou_type in ("segm", "bbox"):
        ref = stats_dict(pycoco_eval(gt_dict, written, iou_type))
        assert {k: metrics[f"{iou_type}/{k}"] for k in ref} == ref
    assert 0.0 <= metrics["attr/color/acc"] <= 1.0 and "joint/AP" in metrics
    assert metrics["joint/AP"] <= metrics["segm/AP"] + 1e-12
    assert "maxDets [1, 10, 100]" in ev.metric_description
    assert "joint AP" in ev.format_report()
    ev.reset()
    assert ev.compute()["segm/AP"] == -1.0  # no image seen since reset -> nothing to evaluate


def _one_image_gt() -> dict:
    mask = np.zeros((20, 20), np.uint8)
    anns = []
    for i, (x, color) in enumerate([(0, 0), (10, 1)]):
        m = mask.copy()
        m[0:8, x : x + 8] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 4,
                "bbox": [x, 0, 8, 8],
                "area": 64,
                "segmentation": {"size": [20, 20], "counts": rle["counts"].decode()},
                "iscrowd": 0,
                "attributes": {"color": color},
            }
        )
    return {
        "images": [{"id": 1, "file_name": "x", "height": 20, "width": 20}],
        "categories": [{"id": 4, "name": "sq"}],
        "attributes": [{"name": "color", "values": ["red", "blue"]}],
        "annotations": anns,
    }


def test_attribute_metrics_and_joint_ap_by_hand() -> None:
    gt_dict = _one_image_gt()
    gt = parse_coco(gt_dict)
    masks = torch.zeros((2, 20, 20), dtype=torch.bool)
    masks[0, 0:8, 0:8] = True
    masks[1, 0:8, 10:18] = True
    pred = InstancePrediction(
        masks=masks,
        boxes=torch.zeros((2, 4)),
        labels=torch.tensor([0, 0]),
        scores=torch.tensor([0.9, 0.8]),
        meta=SampleMeta(image_id=1),
        # first right (red), second wrong (red instead of blue)
        attributes={"color": AttributePrediction(torch.tensor([0, 0]), torch.tensor([0.7, 0.6]))},
    )
    ev = CocoEvaluator(gt)
    ev.process(_batch(1), [pred])
    m = ev.compute()
    assert m["segm/AP"] == pytest.approx(1.0)
    assert m["attr/color/acc"] == 0.5
    # red: tp 1, fp 1, fn 0 -> F1 2/3; blue: tp 0, fn 1 -> 0; macro = 1/3
    assert m["attr/color/f1"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(ev.attribute_results[0].confusion, [[1, 0, 0], [1, 0, 0]])
    # Joint: the (sq, red) composite is perfect; (sq, blue) has no correct detection -> AP 0; mean 0.5.
    assert m["joint/AP"] == pytest.approx(0.5)


def test_labels_map_back_to_category_ids(tmp_path: Path) -> None:
    gt_dict = _one_image_gt()
    gt = parse_coco(gt_dict)
    masks = torch.zeros((1, 20, 20), dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    pred = InstancePrediction(
        masks, torch.zeros((1, 4)), torch.tensor([0]), torch.tensor([0.5]), SampleMeta(image_id=1)
    )
    out = tmp_path / "r.json"
    write_prediction_results(out, [pred], gt.category_ids)
    (det,) = load_coco_results(out, gt)
    assert det.category_id == 4 and det.bbox == (3.0, 2.0, 6.0, 3.0) and det.area == 18.0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary behind


def test_cli_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_dict, dets = random_coco_case(2, num_images=5, attributes=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    parser = argparse.ArgumentParser()
    evaluate_coco.add_arguments(parser)
    args = parser.parse_args(
        [
            "--gt",
            str(tmp_path / "gt.json"),
            "--pred",
            str(tmp_path / "dt.json"),
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert evaluate_coco.run(args) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert {k: written[k] for k in stats_dict(pycoco_eval(gt_dict, dets, "segm"))} == stats_dict(
        pycoco_eval(gt_dict, dets, "segm")
    )
    assert "c1" in written["per_category"] and "attr/color/acc" in written
    assert "Average Precision" in capsys.readouterr().out


def test_semantic_predictions_are_refused_in_one_line() -> None:
    """``model.test_mode=semantic`` on an instance config: a ConfigError, not a TypeError from len()."""
    from masklab.errors import ConfigError
    from masklab.structures import SemanticPrediction

    ev = CocoEvaluator(parse_coco(_one_image_gt()))
    pred = SemanticPrediction(label_map=torch.zeros((20, 20), dtype=torch.int64), meta=SampleMeta(image_id=1))
    with pytest.raises(
        ConfigError, match=r"^model\.test_mode: .*SemanticPrediction.*model\.test_mode=instance"
    ):
        ev.process(_batch(1), [pred])
