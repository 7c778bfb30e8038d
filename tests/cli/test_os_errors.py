"""A file-system error on a path the user gave (an --out under a file, an unwritable folder) is one
line naming the path, exit 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masklab.cli.main import main, os_error_line


def test_an_out_path_under_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"mode": "train", "iteration": 1, "loss": 1.0}) + "\n")
    blocker = tmp_path / "afile.txt"
    blocker.write_text("not a folder")
    code = main(["analyze-logs", str(log), "--keys", "loss", "--out", str(blocker / "curves.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: --out {blocker}"), err
    assert "is a file, where a folder is needed" in err[0]


def test_atomic_temporary_names_are_shown_as_the_target() -> None:
    err = PermissionError(13, "Permission denied", "/data/out/.metrics.json.k2j3h4.tmp")
    assert os_error_line(err) == "/data/out/metrics.json: permission denied"
    moved = OSError(18, "Invalid cross-device link", "/a/.x.pth.abc.tmp", None, "/b/x.pth")
    assert os_error_line(moved) == "/a/x.pth -> /b/x.pth: invalid cross-device link"


def test_an_os_error_without_a_path_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import masklab.cli.analyze_logs as command

    def boom(args: object) -> int:
        raise OSError("socket closed")  # no errno, no file name: a bug, not a user mistake

    monkeypatch.setattr(command, "run", boom)
    with pytest.raises(OSError, match="socket closed"):
        main(["analyze-logs", "x", "--keys", "loss", "--out", "y.png"])
