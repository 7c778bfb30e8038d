"""Fixtures for doctor tests: a tiny synthetic dataset and the tiny config resolved on it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from masklab.config import load_config, resolve_sections
from masklab.config.assemble import resolve
from masklab.config.schema import ResolvedConfig
from masklab.doctor import DoctorContext

TINY = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masklab.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("doctor_synth")
    synthesize(root, num_train=4, num_val=2, size=64, seed=0)
    return root


@pytest.fixture
def data_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst)
    return dst


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., DoctorContext]:
    def make(
        root: Path, *overrides: str, config: Path = TINY, steps: int = 3, nodes: bool = True
    ) -> DoctorContext:
        """``nodes=False`` checks only the typed sections, so a test may plant model keys the tiny
        model does not take (another family's ``model.decoder``) to drive a config check."""
        all_overrides = [f"dataset.root={root}", *overrides]
        rc: ResolvedConfig = (
            resolve(config, all_overrides) if nodes else resolve_sections(load_config(config, all_overrides))
        )
        return DoctorContext(rc, tmp_path / "doctor", steps=steps, samples=2)

    return make
