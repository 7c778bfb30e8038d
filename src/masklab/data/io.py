"""Reading images and label maps from disk, and writing PNGs atomically.

Every failure is a one-line :class:`DataError` naming the file, so a bad file in a 100k-image
dataset is found from the message alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from masklab.atomic_files import atomic_path
from masklab.errors import DataError

# Label PNGs in these modes hold one integer per pixel ("P" = palette PNG, whose indices are the ids).
_LABEL_MODES = {"L", "P", "I", "I;16", "I;16B", "I;16L", "1"}
# 16-bit greyscale as PIL opens it (PNG: "I;16"; TIFF also the byte-order variants).
_GREY16_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def _open_loaded(path: str | Path) -> Image.Image:
    """Open and fully decode an image; PIL raises on truncated data only when the pixels are loaded."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        img = Image.open(p)
        img.load()
    except UnidentifiedImageError:
        raise DataError(f"{p}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{p}: corrupt or truncated image ({reason})") from None
    return img


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png_8bit(path: Path) -> torch.Tensor | None:
    """(3, H, W) uint8 RGB of an 8-bit PNG decoded by OpenCV (no PIL plugin machinery: ~25 % less
    time per small image, which labeling pays per box), or None for anything else: the PIL path
    then reads it or says what is wrong. Only the 26-byte header is read to decide (a JPEG or a
    16-bit PNG is not read or decoded twice). PNG is lossless, so the pixels are PIL's exactly
    (grey, palette, alpha dropped: tested)."""
    import cv2

    try:
        with path.open("rb") as f:
            head = f.read(26)
            # Signature, then the IHDR chunk: its bit depth is byte 24.
            if (
                len(head) < 26
                or not head.startswith(_PNG_SIGNATURE)
                or head[12:16] != b"IHDR"
                or head[24] != 8
            ):
                return None
            data = head + f.read()
    except OSError:  # unreadable: the PIL path says why, in one line
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint8:
        return None
    if arr.ndim == 2:
        return torch.from_numpy(arr)[None].expand(3, -1, -1).contiguous()
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # BGR(A) -> RGB planes, alpha dropped
        return torch.from_numpy(np.ascontiguousarray(arr[:, :, 2::-1].transpose(2, 0, 1)))
    return None


def read_image(path: str | Path, *, exif_orientation: bool = False) -> torch.Tensor:
    """Read an image as a (3, H, W) uint8 RGB tensor.

    Grey, palette and RGBA images are converted to RGB (alpha is dropped). 16-bit greyscale
    (PNG, TIFF) keeps its top 8 bits (``value >> 8``), as 16-bit RGB already does when PIL reads it;
    PIL's own conversion would saturate every value above 255 to white.

    ``exif_orientation=True`` turns the pixels upright as a viewer shows them (a phone JPEG's EXIF
    ``Orientation``), as OpenCV's ``imread`` and detectron2's ``read_image`` do. Inference reads its
    inputs so; datasets do not, since their labels and boxes are drawn on the stored pixels.

    Raises:
        DataError: the file is missing, not an image, corrupt or truncated, or a 32-bit integer or
            float greyscale image with values outside 0..255 (no scale to 8 bits can be told).
    """
    p = Path(path)
    if not exif_orientation and p.is_file():
        fast = _read_png_8bit(p)
        if fast is not None:
            return fast
    img = _open_loaded(path)
    if exif_orientation:
        img = ImageOps.exif_transpose(img)
    if img.mode in _GREY16_MODES:
        grey = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        arr = np.repeat(grey[..., None], 3, axis=2)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if img.mode in ("I", "F"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 255):
            bits = "32-bit integer" if img.mode == "I" else "32-bit float"
            raise DataError(
                f"{path}: {bits} greyscale image (mode {img.mode!r}) with values {values.min():g}..{values.max():g}; "
                "expected 8-bit images or 16-bit greyscale (convert it to 8 bits first)"
            )
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str | Path) -> torch.Tensor:
    """Read a single-channel label map as an (H, W) int64 tensor of class ids.

    Raises:
        DataError: the file is missing/corrupt, or holds colour (RGB/RGBA) instead of one id per pixel.
    """
    img = _open_loaded(path)
    if img.mode not in _LABEL_MODES:
        raise DataError(
            f"{path}: label map has mode {img.mode!r} ({len(img.getbands())} channels); expected a single-channel "
            "PNG of class ids (convert colour-coded masks to ids first)"
        )
    arr = np.asarray(img)
    return torch.from_numpy(arr.astype(np.int64))


def write_png_atomic(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    """Write a (H, W) uint8 label map or (H, W, 3) / (3, H, W) uint8 RGB image as PNG.

    The file is written under a temporary name in the same directory and renamed, so readers
    never see a half-written PNG.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: values {arr.min()}..{arr.max()} do not fit an 8-bit PNG")
        arr = arr.astype(np.uint8)
    out = Path(path)
    with atomic_path(out) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
