"""Fixtures for Inferencer tests: a tiny synthetic dataset and a checkpoint of the tiny FCN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# GroupNorm everywhere, size_divisor 32: seconds to build and run on 64 px images.
TINY_FCN = REPO / "tests" / "cli" / "configs" / "tiny_fcn.yaml"
SEGFORMER = REPO / "configs" / "segformer" / "segformer_mit-b0_1xb8-1800i_synthetic-128x128.yaml"


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 + 2 synthetic 64 px images with semantic labels and COCO instances (7 semantic classes)."""
    from masklab.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("infer_synth")
    synthesize(root, num_train=2, num_val=2, size=64, seed=0, max_objects=2)
    return root


@pytest.fixture(scope="session")
def fcn_ckpt(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny FCN for the synthetic classes (no dataset_meta, like a bare state dict)."""
    from masklab.config.assemble import build_dataset, build_model, resolve
    from masklab.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    rc = resolve(TINY_FCN, [f"dataset.root={synth}"])
    model = build_model(rc, build_dataset(rc, "train").metainfo)
    path = tmp_path_factory.mktemp("infer_ckpt") / "fcn.pth"
    return save_checkpoint(path, {"model": model.state_dict(), "iteration": 0})
