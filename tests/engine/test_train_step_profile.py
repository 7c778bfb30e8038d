"""benchmarks/train_step_profile.py builds the trainer as ``masklab train`` does and times its step."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from masklab.data.synthetic import synthesize

ROOT = Path(__file__).resolve().parents[2]


def test_profiles_the_tiny_config_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "train_step_profile", ROOT / "benchmarks" / "train_step_profile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    synthesize(tmp_path / "data", num_train=4, num_val=2, size=64, seed=0, max_objects=2)
    config = ROOT / "tests" / "cli" / "configs" / "tiny_fcn.yaml"
    argv = [str(config), f"dataset.root={tmp_path / 'data'}", "--warmup", "1", "--steps", "2"]
    assert module.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.search(r"on cpu \(\d+ threads\): step ([0-9.]+) ms$", line)
    assert match and float(match.group(1)) > 0, line
