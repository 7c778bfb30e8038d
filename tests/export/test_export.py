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
    "deeplabv3": "deeplabv3/deeplabv3_mit-b0_1xb8-4200i_synthetic-96x96.yaml",
    "deeplabv3plus": "deeplabv3plus/deeplabv3plus_mit-b0_1xb8-4200i_synthetic-96x96.yaml",
    "fcn": "fcn/fcn_mit-b0_1xb8-3600i_synthetic-128x128.yaml",
    "segformer": "segformer/segformer_mit-b0_1xb8-3400i_synthetic-128x128.yaml",
    "upernet": "upernet/upernet_mit-b0_1xb8-2400i_synthetic-128x128.yaml",
    "pspnet": "pspnet/pspnet_mit-b0_1xb8-4800i_synthetic-96x96.yaml",
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


# deeplabv3 / fcn / pspnet: heads that run their resize_concat input level by level in eager mode export
# the plain concatenation (DecodeHead.resized_levels), which must then match the eager levels path.
@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus", "fcn", "pspnet", "segformer", "upernet"])
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


# ---------------------------------------------------------------- sizes off the stride
def _inference_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What `masklab infer` computes: collate, data preprocessor (pads to the size divisor), predict (crops)."""
    from masklab.data.collate import collate
    from masklab.structures import Sample, SampleMeta

    h, w = images.shape[-2:]
    samples = [Sample(image=im.round().to(torch.uint8), meta=SampleMeta(ori_shape=(h, w), img_shape=(h, w)))
               for im in images]  # fmt: skip
    with torch.no_grad():
        batch = model.data_preprocessor(collate(samples), training=False)
        return torch.stack([p.logits for p in model(batch, mode="predict")])


def _ort(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def test_dynamic_fpn_graph_runs_at_a_size_off_the_output_stride(tmp_path: Path) -> None:
    # No size divisor, so the graph sees 50x37 itself: the coarse FPN levels upsample to a map a pixel
    # off the finest one. The head resized only when the traced (64x64) shapes differed, so the
    # exported graph added 13x10 to 12x10 and ONNX Runtime failed.
    path = ROOT / ZOO["fpn"]
    torch.manual_seed(0)
    rc = resolve(path, [*tiny_overrides(path), "model.data_preprocessor.size_divisor=null"])
    model = build_model(rc, META).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64), dynamic=True)
    images = torch.randint(0, 256, (1, 3, 50, 37)).float()
    torch.testing.assert_close(
        _ort(onnx_path, images), _inference_logits(model, images), atol=1e-4, rtol=1e-4
    )


def test_dynamic_graph_pads_to_the_size_divisor_as_inference_does(tmp_path: Path) -> None:
    # Inference pads 50x37 to 64x64 (size_divisor 32), predicts and crops back; a graph without the
    # padding saw another image (argmax agreement 0.58-0.71 on trained models).
    _, _, model = _tiny("segformer")
    assert model.data_preprocessor.size_divisor == 32
    onnx_path = export_onnx(model, tmp_path / "m.onnx", input_size=(64, 64), dynamic=True)
    images = torch.randint(0, 256, (2, 3, 50, 37)).float()
    torch.testing.assert_close(
        _ort(onnx_path, images), _inference_logits(model, images), atol=1e-4, rtol=1e-4
    )
    report = verify_onnx(model, onnx_path, images)  # verify compares with the same inference path
    assert report.max_abs_diff < 1e-4 and report.label_agreement == 1.0


@pytest.fixture(scope="module")
def fpn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path]:
    config, overrides, model = _tiny("fpn")
    ckpt = tmp_path_factory.mktemp("fpn") / "ckpt.pth"
    save_checkpoint(ckpt, {"model": model.state_dict(), "dataset_meta": META.to_json()})
    return config, overrides, ckpt


def _export(fpn_ckpt: tuple[Path, list[str], Path], *argv: str, fmt: str | None = "onnx") -> int:
    config, overrides, ckpt = fpn_ckpt
    return main(["export", *([fmt] if fmt else []), str(config), str(ckpt), *overrides, *argv])


def _dims(path: Path) -> list[int | str]:
    import onnx

    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape
    return [d.dim_param or d.dim_value for d in shape.dim]


def test_cli_verify_of_a_dynamic_graph_tries_a_size_off_the_stride(
    fpn_ckpt: tuple[Path, list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    code = _export(fpn_ckpt, "model.data_preprocessor.size_divisor=null", "--out", str(out),
                   "--dynamic", "--verify", "--input-size", "64", "64")  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    checked = [line for line in text.splitlines() if "max |diff|" in line]
    assert "[2, 3, 96, 96]" in checked[0] and "[1, 3, 71, 77]" in checked[1], text
    assert all("agreement 100.000%" in line for line in checked)


# ---------------------------------------------------------------- one-line errors, atomic files
def test_failed_onnx_write_keeps_the_old_file_and_is_one_line(
    fpn_ckpt: tuple[Path, list[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    def too_large(model: object, args: object, f: str, **kwargs: object) -> None:
        Path(f).write_bytes(b"half a model")  # what `ulimit -f` leaves
        raise OSError(errno.EFBIG, "File too large")

    out = tmp_path / "model.onnx"
    out.write_bytes(b"a good model")
    monkeypatch.setattr(torch.onnx, "export", too_large)
    assert _export(fpn_ckpt, "--out", str(out), "--input-size", "64", "64") == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: could not write the ONNX file (File too large)\n"
    assert out.read_bytes() == b"a good model" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_failed_safetensors_write_is_one_line(
    fpn_ckpt: tuple[Path, list[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def too_large(model: object, filename: str, **kwargs: object) -> None:
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.torch, "save_model", too_large)
    out = tmp_path / "w.safetensors"
    assert _export(fpn_ckpt, "--out", str(out), fmt="safetensors") == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: could not write the weights (File too large (os error 27))\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--opset", "99"], "--opset 99: expected an ONNX opset from 7 to 20 (default 17)"),
        (["--opset", "7"], "--opset 7: ONNX export of Pad needs opset 11 or later (the exporter writes 7 to 20; default 17)"),
        (["--input-size", "0", "0"], "--input-size 0 0: expected [height, width] of at least 1 pixel, got [0, 0]"),
        (["export.opset=6"], "<override>: export.opset 6: expected an ONNX opset from 7 to 20 (default 17)"),
    ],
)  # fmt: skip
def test_bad_export_flags_are_one_line(
    fpn_ckpt: tuple[Path, list[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    out = tmp_path / "m.onnx"
    assert _export(fpn_ckpt, "--out", str(out), "--input-size", "64", "64", *flags) == 2
    err = capsys.readouterr().err  # torch's warnings may come first
    assert err.endswith(f"\nerror: {message}\n") or err == f"error: {message}\n"
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_an_input_size_below_the_stride_exports_padded(
    fpn_ckpt: tuple[Path, list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert _export(fpn_ckpt, "--out", str(out), "--input-size", "8", "8", "--static", "--verify") == 0
    assert _dims(out) == [1, 3, 8, 8]
    assert "on [1, 3, 8, 8]" in capsys.readouterr().out


def test_export_section_gives_the_defaults_and_flags_override_it(
    fpn_ckpt: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    size = ["--input-size", "64", "64"]
    assert _export(fpn_ckpt, "--out", str(tmp_path / "a.onnx"), *size) == 0  # export.dynamic: true
    assert _dims(tmp_path / "a.onnx") == ["batch", 3, "height", "width"]
    assert _export(fpn_ckpt, "--out", str(tmp_path / "b.onnx"), "--static", *size) == 0
    assert _dims(tmp_path / "b.onnx") == [1, 3, 64, 64]
    assert (
        _export(
            fpn_ckpt, "export.dynamic=false", "export.input_size=[32,48]", "--out", str(tmp_path / "c.onnx")
        )
        == 0
    )
    assert _dims(tmp_path / "c.onnx") == [1, 3, 32, 48]
    assert (
        _export(fpn_ckpt, "export.dynamic=false", "--dynamic", "--out", str(tmp_path / "d.onnx"), *size) == 0
    )
    assert _dims(tmp_path / "d.onnx") == ["batch", 3, "height", "width"]
    # export.format when the format word is left out
    assert _export(fpn_ckpt, "export.format=safetensors", "--out", str(tmp_path / "w.st"), fmt=None) == 0
    from safetensors.torch import load_file

    assert "decode_head.conv_seg.weight" in load_file(str(tmp_path / "w.st"))


def test_another_models_checkpoint_names_the_file(
    fpn_ckpt: tuple[Path, list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, overrides, _ = fpn_ckpt
    other = save_checkpoint(
        tmp_path / "other.pth", {"model": {"conv.weight": torch.zeros(1)}, "dataset_meta": META.to_json()}
    )
    assert (
        main(["export", "onnx", str(config), str(other), *overrides, "--out", str(tmp_path / "m.onnx")]) == 2
    )
    assert capsys.readouterr().err.startswith(f"error: {other}: weights do not fit this model (")


def test_out_that_is_a_folder_is_refused_before_the_export(
    fpn_ckpt: tuple[Path, list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _export(fpn_ckpt, "--out", str(tmp_path)) == 2
    assert (
        capsys.readouterr().err
        == f"error: --out {tmp_path}: is a folder; expected a file path such as {tmp_path / 'model.onnx'}\n"
    )
