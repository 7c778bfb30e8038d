"""``masklab doctor`` end to end: table, doctor.md and picture written, exit 1 on a planted error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.cli.main import main

from .conftest import TINY


@pytest.mark.slow
def test_doctor_cli_exit_code_and_report(
    data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = data_copy / "labels" / "val" / "000000.png"
    arr = np.array(Image.open(bad))
    arr[0, 0] = 42
    Image.fromarray(arr).save(bad)
    work = tmp_path / "doc"
    code = main(
        [
            "doctor",
            str(TINY),
            f"dataset.root={data_copy}",
            "--work-dir",
            str(work),
            "--steps",
            "2",
            "--samples",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "fix the errors before training" in out
    report = (work / "doctor.md").read_text()
    assert "| data.labels[val] | error |" in report and "[42]" in report and "doctor: 1 errors" in report
    assert "![train_pipeline](train_pipeline.png)" in report and (work / "train_pipeline.png").is_file()
