"""Resume is exact with loader worker processes and random transforms: every sample's augmentation
is drawn from a seed of (runtime.seed, its position in the sample stream), so neither the resume
point nor the number of workers changes what a step sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main
from masklab.engine.checkpoint import load_checkpoint

TINY = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"
# Flip and photometric distortion: almost every sample draws a different image from another seed.
PIPELINE = "dataset.train.pipeline=[{type: RandomFlip, prob: 0.5}, {type: PhotoMetricDistortion}]"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masklab.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("resume_workers")
    synthesize(root, num_train=4, num_val=2, size=64, seed=0, max_objects=2)
    return root


def _train(root: Path, work: Path, workers: int, *extra: str) -> None:
    argv = ["train", str(TINY), f"dataset.root={root}", "--work-dir", str(work), "--no-progress", PIPELINE,
            "train.max_iters=4", "train.checkpoint_interval=2", f"train.num_workers={workers}", *extra]  # fmt: skip
    assert main(argv) == 0


def _losses(work: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["loss"] for r in records if r.get("mode") == "train"}


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(work / "checkpoints" / "iter_0000004.pth")["model"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_worker_and_random_transforms_is_exact(data_root: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(data_root, straight, 1)
    _train(data_root, split, 1, "train.max_iters=2")
    torch.manual_seed(12345)  # only a correct restore can reproduce the rest of the run
    _train(data_root, split / "resumed", 1, "--resume", str(split / "checkpoints" / "iter_0000002.pth"))

    resumed = _losses(split / "resumed")
    assert resumed.keys() == {3, 4}
    assert all(resumed[k] == _losses(straight)[k] for k in resumed), (resumed, _losses(straight))
    assert _same_weights(_weights(split / "resumed"), _weights(straight))


def test_worker_count_does_not_change_the_run(data_root: Path, tmp_path: Path) -> None:
    _train(data_root, tmp_path / "w0", 0)
    _train(data_root, tmp_path / "w2", 2)
    assert _losses(tmp_path / "w0") == _losses(tmp_path / "w2")
    assert _same_weights(_weights(tmp_path / "w0"), _weights(tmp_path / "w2"))
