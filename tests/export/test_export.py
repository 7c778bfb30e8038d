"""ONNX export + ONNX Runtime verification for several zoo heads; safetensors export; the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from masklab.cli.main import main
from masklab.config.assemble import build_model, resolve
from masklab.data.meta import DatasetMeta
from masklab.engine.checkpoint import save_checkpoint
from masklab.export import export_onnx, verify_onnx
from tests.configs.test_zoo_sweep import ROOT, tiny_overrides

META = DatasetMeta(classes=("a", "b", "c"))
ZOO = {
    "deeplabv3plus": "deeplabv3plus/deeplabv3plus_mit-b0_1xb8-2550i_synthetic-128x128.yaml",
    "segformer": "segformer/segformer_mit-b0_1xb8-2650i_synthetic-128x128.yaml",
    "upernet": "upernet/upernet_mit-b0_1xb8-1950i_synthetic-128x128.yaml",
    "pspnet": "pspnet/pspnet_mit-b0_1xb8-2450i_synthetic-128x128.yaml",
    "fpn": "fpn/fpn_regnetx002_1xb8-2000i_synthetic-128x128.yaml",
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(name: str) -> tuple[Path, list[str], torch.nn.Module]:
    path = ROOT / ZOO[name]
    overrides = tiny_overrides(path)
    torch.manual_seed(0)
    model = build_model(resolve(path, overrides), META).eval()
    return path, overrides, model


@pytest.mark.parametrize("name", ["deeplabv3plus", "segformer", "upernet"])
def test_dynamic_onnx_matches_pytorch_at_another_size(name: str, tmp_path: Path) -> None:
    _, _, model = _tiny(name)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64), dynamic=True)
    report = verify_onnx(model, path, torch.rand(2, 3, 96, 64) * 255)
    assert report.shape == (2, 3, 96, 64)
    assert report.max_abs_diff < 1e-3
    assert report.label_agreement > 0.999


def test_static_onnx_has_fixed_input_shape(tmp_path: Path) -> None:
    import onnx

    _, _, model = _tiny("pspnet")
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64))
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    assert verify_onnx(model, path, torch.rand(1, 3, 64, 64) * 255).max_abs_diff < 1e-3


def test_cli_exports_onnx_with_verify_and_safetensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, overrides, model = _tiny("fpn")
    ckpt = save_checkpoint(
        tmp_path / "ckpt.pth", {"model": model.state_dict(), "dataset_meta": META.to_json()}
    )
    onnx_path = tmp_path / "out" / "model.onnx"
    code = main(
        [
            "export",
            "onnx",
            str(config),
            str(ckpt),
            *overrides,
            "--out",
            str(onnx_path),
            "--dynamic",
            "--verify",
            "--input-size",
            "64",
            "64",
        ]  # fmt: skip
    )
    out = capsys.readouterr().out
    assert code == 0 and onnx_path.is_file()
    assert "max |diff|" in out
    st = tmp_path / "w.safetensors"
    assert main(["export", "safetensors", str(config), str(ckpt), *overrides, "--out", str(st)]) == 0
    from safetensors.torch import load_file

    weights = load_file(str(st))
    torch.testing.assert_close(weights["decode_head.conv_seg.weight"], model.decode_head.conv_seg.weight)


def test_cli_missing_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ROOT / ZOO["fpn"]
    code = main(
        ["export", "onnx", str(config), str(tmp_path / "none.pth"), "--out", str(tmp_path / "m.onnx")]
    )
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_onnx_export_of_an_instance_model_is_refused_naming_safetensors() -> None:
    from masklab.errors import ModelError
    from masklab.export.onnx import SegmentationGraph

    class QueryModel(torch.nn.Module):  # no encode_decode: a Mask2Former / MAL model
        pass

    with pytest.raises(ModelError, match=r"export onnx: QueryModel is not supported .*export safetensors"):
        SegmentationGraph(QueryModel())
