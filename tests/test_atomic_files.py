"""Atomic writes: complete or absent, with the permissions of a plain open() (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from masklab.atomic_files import atomic_path, atomic_write


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask, mask: int, mode: int) -> None:
    umask(mask)
    out = tmp_path / "sub" / "metrics.json"
    atomic_write(out, lambda f: f.write(b"{}"))
    assert out.read_bytes() == b"{}"
    assert stat.S_IMODE(out.stat().st_mode) == mode
    with atomic_path(tmp_path / "pred.png") as tmp:
        tmp.write_bytes(b"png")
    assert stat.S_IMODE((tmp_path / "pred.png").stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "ckpt.pth"
    out.write_bytes(b"old")

    def boom(f) -> None:  # noqa: ANN001
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(out, boom)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_checkpoints_predictions_and_exports_are_readable_by_others(tmp_path: Path, umask) -> None:
    import numpy as np
    import torch

    from masklab.engine.checkpoint import export_safetensors, save_checkpoint
    from masklab.inference.writers import write_label_png

    umask(0o022)
    paths = [
        save_checkpoint(tmp_path / "iter_1.pth", {"model": {"w": torch.zeros(1)}, "iteration": 1}),
        write_label_png(tmp_path / "pred" / "a.png", np.zeros((4, 4), np.uint8)),
        export_safetensors(torch.nn.Linear(2, 2), tmp_path / "m.safetensors"),
    ]
    for path in paths:
        assert stat.S_IMODE(Path(path).stat().st_mode) & 0o044 == 0o044, path
