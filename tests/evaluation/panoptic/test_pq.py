"""Panoptic quality on hand-made 10x10 images whose PQ is worked out in each test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.errors import DataError
from masklab.evaluation.panoptic import PQResult, id_map_to_rgb, pq_compute, read_id_map

PERSON, CAR, SKY = 1, 2, 3  # things: person, car; stuff: sky
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1},
    {"id": CAR, "name": "car", "isthing": 1},
    {"id": SKY, "name": "sky", "isthing": 0},
]
Segment = tuple[int, int, int]  # (id, category_id, iscrowd)


def _side(root: Path, name: str, ids: np.ndarray, segments: list[Segment]) -> tuple[Path, Path]:
    folder = root / name
    folder.mkdir()
    Image.fromarray(id_map_to_rgb(ids)).save(folder / "1.png")
    infos = [
        {"id": i, "category_id": c, "iscrowd": crowd, "area": int((ids == i).sum())}
        for i, c, crowd in segments
    ]
    data = {
        "annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": infos}],
        "categories": CATEGORIES,
    }
    path = root / f"{name}.json"
    path.write_text(json.dumps(data))
    return path, folder


def _pq(
    tmp_path: Path, gt: np.ndarray, gt_segs: list[Segment], pred: np.ndarray, pred_segs: list[Segment]
) -> PQResult:
    gt_json, gt_folder = _side(tmp_path, "gt", gt, gt_segs)
    pred_json, pred_folder = _side(tmp_path, "pred", pred, pred_segs)
    return pq_compute(gt_json, gt_folder, pred_json, pred_folder)


def _person_left_sky_right() -> np.ndarray:
    ids = np.zeros((10, 10), dtype=np.int64)
    ids[:, :5] = 1  # person, 50 px
    ids[:, 5:] = 2  # sky, 50 px
    return ids


def test_png_ids_round_trip(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]])
    Image.fromarray(id_map_to_rgb(ids)).save(tmp_path / "x.png")
    assert np.array_equal(read_id_map(tmp_path / "x.png"), ids)


def test_perfect_match(tmp_path: Path) -> None:
    gt = _person_left_sky_right()
    segs = [(1, PERSON, 0), (2, SKY, 0)]
    r = _pq(tmp_path, gt, segs, gt.copy(), segs)
    assert (r.all.pq, r.all.sq, r.all.rq, r.all.n) == (1.0, 1.0, 1.0, 2)
    assert r.things.n == 1 and r.stuff.n == 1
    assert r.per_category[CAR].tp + r.per_category[CAR].fp + r.per_category[CAR].fn == 0  # not averaged


def test_one_false_positive_and_things_stuff_split(tmp_path: Path) -> None:
    gt = _person_left_sky_right()
    pred = gt.copy()
    pred[:2, 5:] = 3  # a 10 px "car" cut out of the sky
    r = _pq(tmp_path, gt, [(1, PERSON, 0), (2, SKY, 0)], pred, [(1, PERSON, 0), (2, SKY, 0), (3, CAR, 0)])
    # sky: IoU 40/50 = 0.8, TP; car: FP (lies on sky, not void); person: perfect.
    sky, car = r.per_category[SKY], r.per_category[CAR]
    assert (sky.tp, sky.fp, sky.fn) == (1, 0, 0) and sky.iou == pytest.approx(0.8)
    assert (car.tp, car.fp, car.fn) == (0, 1, 0) and car.pq == 0.0
    assert r.all.pq == pytest.approx((1 + 0.8 + 0) / 3) and r.all.rq == pytest.approx(2 / 3)
    assert r.things.pq == pytest.approx(0.5) and r.things.n == 2  # person 1, car 0
    assert (r.stuff.pq, r.stuff.sq, r.stuff.rq) == (pytest.approx(0.8), pytest.approx(0.8), 1.0)
    assert r.as_dict()["PQ_th"] == pytest.approx(0.5)


def test_one_false_negative(tmp_path: Path) -> None:
    gt = _person_left_sky_right()
    pred = np.where(gt == 1, 0, gt)  # the person is left unlabeled
    r = _pq(tmp_path, gt, [(1, PERSON, 0), (2, SKY, 0)], pred, [(2, SKY, 0)])
    person = r.per_category[PERSON]
    assert (person.tp, person.fp, person.fn) == (0, 0, 1)
    assert r.all.pq == pytest.approx(0.5) and r.things.pq == 0.0 and r.stuff.pq == 1.0


def test_match_at_iou_06_and_not_at_05(tmp_path: Path) -> None:
    gt = _person_left_sky_right()
    pred = gt.copy()
    pred[:, 3:5] = 0  # person predicted on 30 of its 50 px: IoU 0.6
    r = _pq(tmp_path, gt, [(1, PERSON, 0), (2, SKY, 0)], pred, [(1, PERSON, 0), (2, SKY, 0)])
    person = r.per_category[PERSON]
    assert (person.tp, person.fp, person.fn) == (1, 0, 0)
    assert (person.pq, person.sq, person.rq) == (pytest.approx(0.6), pytest.approx(0.6), 1.0)

    (tmp_path / "half").mkdir()
    pred[5:, :3] = 0  # now 25 of 50 px: IoU 0.5 is not > 0.5, so one FN and one FP
    r = _pq(tmp_path / "half", gt, [(1, PERSON, 0), (2, SKY, 0)], pred, [(1, PERSON, 0), (2, SKY, 0)])
    person = r.per_category[PERSON]
    assert (person.tp, person.fp, person.fn) == (0, 1, 1) and person.pq == 0.0
    assert r.things.pq == 0.0 and r.all.pq == pytest.approx(0.5)


def test_void_is_removed_from_iou_and_excuses_false_positives(tmp_path: Path) -> None:
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5] = 1  # person; the right half is void
    gt[8:, :5] = 2  # sky in the bottom-left 10 px, person keeps 40 px
    pred = np.zeros_like(gt)
    pred[:8, :7] = 1  # person: its 40 px plus 16 px of void -> IoU 40 / (56 + 40 - 40 - 16) = 1
    pred[:, 8:] = 3  # car entirely on void: not a false positive
    pred[8:, :5] = 4  # car over the sky (10 px) ...
    pred[8:, 5:7] = 4  # ... and 4 px of void: 4/14 <= 0.5, a false positive
    r = _pq(
        tmp_path,
        gt,
        [(1, PERSON, 0), (2, SKY, 0)],
        pred,
        [(1, PERSON, 0), (3, CAR, 0), (4, CAR, 0)],
    )
    person, car, sky = r.per_category[PERSON], r.per_category[CAR], r.per_category[SKY]
    assert (person.tp, person.fp, person.fn) == (1, 0, 0) and person.iou == pytest.approx(1.0)
    assert (car.tp, car.fp, car.fn) == (0, 1, 0)
    assert (sky.tp, sky.fp, sky.fn) == (0, 0, 1)
    assert r.all.pq == pytest.approx(1 / 3) and r.all.n == 3


def test_crowd_is_never_matched_and_excuses_its_category(tmp_path: Path) -> None:
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :5] = 1  # person
    gt[:, 5:] = 5  # a crowd of persons
    pred = gt.copy()
    pred[:, 5:8] = 6  # person inside the crowd: excused, and the crowd itself is no FN
    pred[:, 8:] = 7  # car inside the person crowd: other category, so a false positive
    r = _pq(
        tmp_path, gt, [(1, PERSON, 0), (5, PERSON, 1)], pred, [(1, PERSON, 0), (6, PERSON, 0), (7, CAR, 0)]
    )
    person, car = r.per_category[PERSON], r.per_category[CAR]
    assert (person.tp, person.fp, person.fn) == (1, 0, 0)
    assert (car.tp, car.fp, car.fn) == (0, 1, 0)
    assert r.things.pq == pytest.approx(0.5) and r.stuff.n == 0


def test_crowd_plus_void_together_excuse(tmp_path: Path) -> None:
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, :4] = 5  # person crowd, 40 px; cols 4-5 void; cols 6-9 sky
    gt[:, 6:] = 2
    pred = np.full_like(gt, 2)
    pred[:, :6] = 6  # person: 40 px crowd + 20 px void of 60 -> excused
    r = _pq(tmp_path, gt, [(5, PERSON, 1), (2, SKY, 0)], pred, [(6, PERSON, 0), (2, SKY, 0)])
    assert r.per_category[PERSON].fp == 0 and r.all.n == 1 and r.all.pq == 1.0


def test_png_and_json_must_agree(tmp_path: Path) -> None:
    gt = _person_left_sky_right()
    with pytest.raises(DataError, match="PNG has segment id 2 that is not in segments_info"):
        _pq(tmp_path, gt, [(1, PERSON, 0), (2, SKY, 0)], gt.copy(), [(1, PERSON, 0)])


def test_missing_prediction_is_an_error(tmp_path: Path) -> None:
    gt = _person_left_sky_right()
    gt_json, gt_folder = _side(tmp_path, "gt", gt, [(1, PERSON, 0), (2, SKY, 0)])
    pred_json = tmp_path / "p.json"
    pred_json.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match="no prediction for image_id 1"):
        pq_compute(gt_json, gt_folder, pred_json, gt_folder)


def test_cli_evaluate_panoptic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from masklab.cli.main import main

    gt = _person_left_sky_right()
    pred = gt.copy()
    pred[:, 3:5] = 0  # person IoU 0.6, sky perfect
    gt_json, gt_folder = _side(tmp_path, "gt", gt, [(1, PERSON, 0), (2, SKY, 0)])
    pred_json, pred_folder = _side(tmp_path, "pred", pred, [(1, PERSON, 0), (2, SKY, 0)])
    argv = ["evaluate", "panoptic", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder)]
    argv += [
        "--pred-json",
        str(pred_json),
        "--pred-folder",
        str(pred_folder),
        "--out",
        str(tmp_path / "m.json"),
    ]
    assert main(argv) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["PQ"] == pytest.approx(0.8) and written["PQ_th"] == pytest.approx(0.6)
    assert written["per_category"]["sky"]["PQ"] == 1.0
    assert "Things" in capsys.readouterr().out
    assert main(["evaluate", "panoptic", "--gt-json", str(gt_json)]) == 2  # one-line error, exit 2
    assert "missing --gt-folder" in capsys.readouterr().err
