from __future__ import annotations

from pathlib import Path

import pytest

from masklab.data.synthetic import synthesize


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image synthetic dataset shared by the data tests (generated once per session)."""
    root = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(root, num_train=32, num_val=8, size=96, seed=0)
    return root
