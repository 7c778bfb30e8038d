from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masklab.data.io import read_image, read_label, write_png_atomic
from masklab.errors import DataError


def test_roundtrip_image_and_label(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png_atomic(tmp_path / "a.png", rgb)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (3, 5, 7) and img.dtype == torch.uint8
    assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(rgb))
    lab = np.array([[0, 3], [255, 1]], dtype=np.uint8)
    write_png_atomic(tmp_path / "l.png", torch.from_numpy(lab))
    out = read_label(tmp_path / "l.png")
    assert out.dtype == torch.int64 and out.tolist() == lab.tolist()
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_grey_image_becomes_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((3, 4), 9, np.uint8)).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 3, 4) and (img == 9).all()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "P+transparency"])
def test_png_pixels_are_pils_in_every_8_bit_mode(tmp_path: Path, mode: str) -> None:
    """8-bit PNGs are decoded by OpenCV (faster); the pixels must be PIL's ``convert("RGB")``."""
    rgb = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    if mode.startswith("P"):
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        if mode == "P+transparency":
            img.info["transparency"] = 3
    else:
        img = img.convert(mode)
    img.save(tmp_path / "x.png", **({"transparency": 3} if mode == "P+transparency" else {}))
    expected = np.asarray(Image.open(tmp_path / "x.png").convert("RGB"))
    got = read_image(tmp_path / "x.png")
    assert got.shape == (3, 9, 11) and got.dtype == torch.uint8 and got.is_contiguous()
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_only_8_bit_pngs_reach_opencv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEGs and 1- / 16-bit PNGs are decided from the header and go to PIL alone (no second read
    or decode); their pixels are still PIL's conversion."""
    import cv2

    calls = []
    decode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1) or decode(*a))
    rgb = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bits.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "deep.png")
    for name in ("a.jpg", "bits.png", "deep.png"):
        read_image(tmp_path / name)
    assert calls == []
    bits = read_image(tmp_path / "bits.png")
    assert np.array_equal(
        bits.permute(1, 2, 0).numpy(), np.asarray(Image.open(tmp_path / "bits.png").convert("RGB"))
    )
    Image.fromarray(rgb).save(tmp_path / "eight.png")
    read_image(tmp_path / "eight.png")
    assert calls == [1]


def test_truncated_png_is_a_one_line_error(tmp_path: Path) -> None:
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")


def test_missing_corrupt_truncated(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt or truncated"):
        read_image(tmp_path / "cut.jpg")


def test_rgb_label_rejected(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: label map has mode 'RGB'"):
        read_label(tmp_path / "rgb.png")


def test_16_bit_grey_keeps_its_top_8_bits(tmp_path: Path) -> None:
    # PIL's convert("RGB") saturates 16-bit grey: every value above 255 became white.
    values = np.array([[0, 255, 256], [4660, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (3, 2, 3) and img.dtype == torch.uint8
    assert img[0].tolist() == [[0, 0, 1], [18, 156, 255]] and (img == img[0]).all()


def test_32_bit_grey_beyond_8_bits_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "g32.tif")
    with pytest.raises(
        DataError, match=r"g32\.tif: 32-bit integer greyscale image \(mode 'I'\) with values 0\.\.70000"
    ):
        read_image(tmp_path / "g32.tif")
    Image.fromarray(np.array([[0, 200]], dtype=np.int32)).save(tmp_path / "small.tif")
    assert read_image(tmp_path / "small.tif")[:, 0, 1].tolist() == [200, 200, 200]
