"""Fixtures for in-process CLI runs on a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "fcn" / "fcn_mit-b0_1xb8-3600i_synthetic-128x128.yaml"

# Shrinks the demo config to a seconds-long run: tiny images, few iterations, no workers.
TINY = [
    "train.max_iters=3",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.val_interval=3",
    "train.checkpoint_interval=3",
    "train.log_interval=1",
    "model.decode_head.channels=16",
    "model.auxiliary_head.channels=8",
    "dataset.train.pipeline=[]",
]


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masklab.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_train=6, num_val=2, size=64, seed=3, max_objects=3)
    return root
