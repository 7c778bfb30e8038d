"""``masklab convert hf-mask2former``: the command writes what the converter function writes, accepts a HF
model folder, and answers a wrong source in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masklab.cli.main import main
from masklab.models.mask2former.convert_hf import convert_hf_state_dict, load_hf_state_dict
from tests.models.mask2former.test_convert_hf import _tiny_hf, _tiny_resnet


def _hf_folder(path: Path, capsys: pytest.CaptureFixture[str], **backbone: object) -> Path:
    hf = _tiny_hf(_tiny_resnet(**backbone)) if backbone else _tiny_hf()
    hf.save_pretrained(path)  # config.json + model.safetensors
    capsys.readouterr()  # its progress bar is not the command's output
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


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
    assert any(k.startswith("backbone.model.layer1.") for k in saved)  # timm names, not HF's
    out = capsys.readouterr().out
    assert "converted" in out and "timm resnet18" in out and "decoder.num_layers 3" in out
    assert (tmp_path / "m2f.yaml").is_file()


def test_convert_accepts_a_hf_model_folder(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _hf_folder(tmp_path / "tiny", capsys)
    dst = tmp_path / "out" / "x.pth"
    assert main(["convert", "hf-mask2former", str(src), str(dst)]) == 0
    assert dst.is_file() and dst.with_suffix(".yaml").is_file()


def test_config_json_as_source_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _hf_folder(tmp_path / "tiny", capsys) / "config.json"
    assert main(["convert", "hf-mask2former", str(src), str(tmp_path / "x.pth")]) == 2
    line = _one_error_line(capsys)
    assert str(src) in line and "not a checkpoint" in line and "folder" in line
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("name", ["notes.txt", "weights.bin", "weights.safetensors"])
def test_non_checkpoint_file_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    src = tmp_path / name
    src.write_text("not weights\n")
    assert main(["convert", "hf-mask2former", str(src), str(tmp_path / "x.pth")]) == 2
    line = _one_error_line(capsys)
    assert str(src) in line and "expected a HF Mask2Former model folder" in line
    assert not (tmp_path / "x.pth").exists()


def test_folder_without_weights_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny").mkdir()
    assert main(["convert", "hf-mask2former", str(tmp_path / "tiny"), str(tmp_path / "x.pth")]) == 2
    assert "no model.safetensors or pytorch_model.bin" in _one_error_line(capsys)


def test_unmappable_backbone_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _hf_folder(tmp_path / "tiny", capsys, embedding_size=32)
    dst = tmp_path / "x.pth"
    assert main(["convert", "hf-mask2former", str(src), str(dst)]) == 2
    assert "embedding_size=32 has no timm counterpart" in _one_error_line(capsys)
    assert not dst.exists() and not dst.with_suffix(".yaml").exists()


def test_convert_missing_source_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["convert", "hf-mask2former", str(tmp_path / "nope.safetensors"), str(tmp_path / "x.pth")]) == 2
    )
    assert "nope.safetensors" in _one_error_line(capsys)
    assert not (tmp_path / "x.pth").exists()


def test_yaml_destination_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _hf_folder(tmp_path / "tiny", capsys)
    assert main(["convert", "hf-mask2former", str(src), str(tmp_path / "x.yaml")]) == 2
    assert ".pth" in _one_error_line(capsys)
