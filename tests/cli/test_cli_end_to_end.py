"""train -> evaluate -> infer -> resume, in-process, on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from masklab.cli.main import main

from .conftest import DEMO_CONFIG, TINY


@pytest.mark.slow
def test_train_evaluate_infer_resume(
    tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "run"
    common = [f"dataset.root={tiny_synth}", *TINY]
    assert main(["train", str(DEMO_CONFIG), *common, "--work-dir", str(work), "--no-progress"]) == 0
    ckpts = sorted((work / "checkpoints").glob("*.pth"))
    assert ckpts, "training wrote no checkpoint"
    assert (work / "config.yaml").is_file() and (work / "metrics.json").is_file()
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in log)
    assert list((work / "tb").iterdir()), "no TensorBoard events"

    # evaluate: metrics file with the IoU family
    out_json = tmp_path / "eval.json"
    assert (
        main(["evaluate", str(DEMO_CONFIG), str(ckpts[-1]), *common, "--out", str(out_json), "--no-progress"])
        == 0
    )
    metrics = json.loads(out_json.read_text())["metrics"]
    assert {"mIoU", "mAcc", "aAcc"} <= set(metrics)
    assert 0.0 <= metrics["aAcc"] <= 1.0
    assert json.loads(out_json.read_text())["how"].endswith("whole image")
    # the report says how predictions were made (it said "whole image" for slide and TTA too)
    slide = ["evaluate.mode=slide", "evaluate.crop_size=[32,32]", "evaluate.stride=[16,16]",
             "evaluate.tta={scales: [0.5, 1.0], flip: true}"]  # fmt: skip
    assert main(["evaluate", str(DEMO_CONFIG), str(ckpts[-1]), *common, *slide, "--out", str(out_json),
                 "--no-progress"]) == 0  # fmt: skip
    how = json.loads(out_json.read_text())["how"]
    assert how.endswith("slide crop (32, 32) stride (16, 16), TTA scales [0.5, 1.0] flip True"), how

    # infer: one label PNG and one overlay per val image, at the original size
    out_dir = tmp_path / "pred"
    val_images = sorted((tiny_synth / "images" / "val").glob("*.png"))
    assert (
        main(
            [
                "infer",
                str(DEMO_CONFIG),
                str(ckpts[-1]),
                *common,
                "--input",
                str(tiny_synth / "images" / "val"),
                "--out",
                str(out_dir),
            ]
        )
        == 0
    )
    preds = sorted((out_dir / "pred").glob("*.png"))
    assert [p.name for p in preds] == [p.name for p in val_images]
    assert Image.open(preds[0]).size == Image.open(val_images[0]).size
    assert len(list((out_dir / "vis").glob("*.png"))) == len(val_images)

    # resume: continue the same run to 5 iterations from its latest checkpoint
    more = [*common, "train.max_iters=5", "train.checkpoint_interval=5"]
    assert main(["train", str(DEMO_CONFIG), *more, "--work-dir", str(work), "--resume", "--no-progress"]) == 0
    payload = (
        torch.load(work / "checkpoints" / "latest.pth", weights_only=True)
        if (work / "checkpoints" / "latest.pth").exists()
        else None
    )
    latest = (work / "checkpoints" / "latest").read_text().strip()
    payload = torch.load(work / "checkpoints" / latest, weights_only=True)
    assert payload["iteration"] == 5
    assert payload["dataset_meta"]["classes"][0] == "background"
    assert "resumed from" in capsys.readouterr().out


def test_runtime_channels_last_builds_an_nhwc_trainer(tiny_synth: Path, tmp_path: Path) -> None:
    """``runtime.channels_last=true``: conv weights NHWC, the trainer feeds NHWC images, and it trains."""
    import torch

    from masklab.config.assemble import build_trainer, resolve

    overrides = [f"dataset.root={tiny_synth}", *TINY, "runtime.channels_last=true", "train.max_iters=1"]
    rc = resolve(DEMO_CONFIG, overrides)
    trainer = build_trainer(rc, work_dir=tmp_path / "w", progress=False, with_val=False)
    convs = [
        m.weight
        for m in trainer.model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert trainer.channels_last
    trainer.train()
    assert trainer.iter == 1


def test_runtime_channels_last_also_places_the_inferencer_model_nhwc(tiny_synth: Path) -> None:
    """The Inferencer (and ``masklab evaluate`` / ``benchmark``, through the same ``place_model``)
    honours ``runtime.channels_last``; predictions equal the NCHW model's."""
    import numpy as np

    from masklab.inference.inferencer import Inferencer

    image = np.asarray(Image.open(sorted((tiny_synth / "images" / "val").glob("*.png"))[0]).convert("RGB"))
    common = [f"dataset.root={tiny_synth}", *TINY, "runtime.seed=3"]
    torch.manual_seed(0)
    nhwc = Inferencer(DEMO_CONFIG, None, device="cpu", overrides=[*common, "runtime.channels_last=true"])
    nchw = Inferencer(DEMO_CONFIG, None, device="cpu", overrides=common)
    nchw.model.load_state_dict(nhwc.model.state_dict())
    convs = [
        m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    (a,), (b,) = nhwc(image), nchw(image)
    assert torch.equal(a.label_map, b.label_map)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
