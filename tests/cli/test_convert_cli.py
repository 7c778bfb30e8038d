"""``masklab convert hf-mask2former``: the command writes what the converter function writes."""

from __future__ import annotations

import pytest
import torch

from masklab.cli.main import main
from masklab.models.mask2former.convert_hf import convert_hf_state_dict, load_hf_state_dict
from tests.models.mask2former.test_convert_hf import _tiny_hf


def test_convert_hf_mask2former_command(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_hf().state_dict().items()}, str(src))
    dst = tmp_path / "m2f.pth"
    assert main(["convert", "hf-mask2former", str(src), str(dst)]) == 0
    saved = torch.load(dst, weights_only=True)["model"]
    expected = convert_hf_state_dict(load_hf_state_dict(src))
    assert set(saved) == set(expected)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert "converted" in capsys.readouterr().out


def test_convert_missing_source_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["convert", "hf-mask2former", str(tmp_path / "nope.safetensors"), str(tmp_path / "x.pth")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.safetensors" in err[0]
    assert not (tmp_path / "x.pth").exists()
