"""ONNX export of semantic segmentors, and verification against masklab's inference with ONNX Runtime.

The exported graph takes ``images``: (B, 3, H, W) float32 RGB pixel values in 0..255 and returns
``logits``: (B, C, H, W) at the input size, as ``masklab infer`` computes them for a whole image
without TTA: the model's normalisation (channel flip, mean/std), padding at the bottom and right to
the data preprocessor's ``size_divisor`` with its ``pad_val``, the forward, and the crop back to the
input size are all inside the graph. A consumer only decodes and stacks images; softmax/argmax is
theirs. Not inside: the config's test pipeline (a ``Resize`` there is the consumer's to apply),
sliding-window inference and TTA.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from masklab.atomic_files import atomic_path
from masklab.errors import CheckpointError, ConfigError, ModelError

DEFAULT_OPSET = 17


def opset_range() -> tuple[int, int]:
    """The opsets torch's TorchScript exporter (the one used here) can write, inclusive."""
    from torch.onnx import _constants

    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return int(_constants.ONNX_MIN_OPSET), int(high)


def check_opset(opset: object, where: str = "opset") -> int:
    """``opset`` as an int the exporter can write, else a one-line :class:`ConfigError` naming ``where``."""
    low, high = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ConfigError(
            f"{where} {opset!r}: expected an ONNX opset from {low} to {high} (default {DEFAULT_OPSET})"
        )
    return opset


class SegmentationGraph(nn.Module):
    """Pixels in, logits out: the part of a segmentor that belongs in a deployment graph.

    Normalises as the data preprocessor does, pads the bottom and right to its ``size_divisor``
    (with its ``pad_val``), runs ``encode_decode`` and crops the logits back to the input size, so
    any input size gives the logits masklab's whole-image inference gives.

    Args:
        model: a segmentor with ``encode_decode(images) -> logits`` and a ``data_preprocessor``
            holding ``mean``/``std`` (and optionally ``bgr_to_rgb``, ``size_divisor``, ``pad_val``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "encode_decode"):
            raise ModelError(
                f"export onnx: {type(model).__name__} is not supported (ONNX export covers the semantic "
                "segmentors); export its weights with `masklab export safetensors`"
            )
        self.model = model
        pre = getattr(model, "data_preprocessor", None)
        mean = getattr(pre, "mean", None)
        std = getattr(pre, "std", None)
        self.register_buffer("mean", mean.clone() if mean is not None else torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", std.clone() if std is not None else torch.ones(1, 3, 1, 1))
        self.bgr_to_rgb = bool(getattr(pre, "bgr_to_rgb", False))
        self.size_divisor = int(getattr(pre, "size_divisor", None) or 1)
        self.pad_val = float(getattr(pre, "pad_val", 0.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixel values -> (B, C, H, W) logits."""
        if self.bgr_to_rgb:
            images = images.flip(1)
        x = (images - self.mean) / self.std
        h, w = x.shape[-2:]  # traced sizes under export: the pad and the crop follow the input
        d = self.size_divisor
        if d > 1:
            # Padded even by 0 pixels: a trace records one branch, and it must pad every later size.
            x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d), value=self.pad_val)
        return self.model.encode_decode(x)[..., :h, :w]


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of comparing ONNX Runtime with masklab's inference on one input.

    Attributes:
        max_abs_diff: largest absolute logit difference.
        label_agreement: fraction of pixels whose argmax agrees.
        shape: (B, C, H, W) of the compared logits.
    """

    max_abs_diff: float
    label_agreement: float
    shape: tuple[int, ...]

    def summary(self) -> str:
        return (
            f"onnxruntime vs masklab inference on {list(self.shape)}: max |diff| {self.max_abs_diff:.3g}, "
            f"argmax agreement {100 * self.label_agreement:.3f}%"
        )


# What torch's exporter says when an operator needs a later opset: UnsupportedOperatorError ("...
# the operator 'aten::x' to ONNX opset version 12 ... added in version 14 ...") and SymbolicValueError
# ("Unsupported: ONNX export of Pad in opset 9. ... Please try opset version 11.").
_OPERATOR = re.compile(r"the operator '([^']+)'|ONNX export of (\w+)")
_NEEDS_OPSET = re.compile(r"(?:added in version|try opset version) (\d+)")


@contextlib.contextmanager
def _quiet_exporter_log() -> Iterator[None]:
    """Keep torch's ONNX IR log off during an export.

    The TorchScript exporter means to turn the log on for ``verbose`` exports only, but tests the
    function ``_jit_is_onnx_log_enabled`` for truth instead of calling it: the log is on for every
    export, and a failed one dumps the whole graph to stderr ahead of its error.
    """
    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:  # another torch layout: nothing to work around
        yield
        return
    original = getattr(utils, "setup_onnx_logging", None)
    if original is None:
        yield
        return
    utils.setup_onnx_logging = lambda verbose: contextlib.nullcontext()
    try:
        yield
    finally:
        utils.setup_onnx_logging = original


def _exporter_error(exc: Exception, opset: int, opset_name: str) -> Exception:
    """One line for an exporter error: the operator and the opset it needs when torch says so."""
    text = str(exc)
    need = _NEEDS_OPSET.search(text)
    if need is None:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return ModelError(f"ONNX export failed at {opset_name} {opset}: {first[:300]}")
    found = _OPERATOR.search(text)
    op = next((g for g in found.groups() if g), "") if found else ""
    low, high = opset_range()
    return ConfigError(
        f"{opset_name} {opset}: ONNX export of {op or 'an operator of this model'} needs opset "
        f"{need.group(1)} or later (the exporter writes {low} to {high}; default {DEFAULT_OPSET})"
    )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] = (512, 512),
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    *,
    opset_name: str = "opset",
    size_name: str = "input_size",
) -> Path:
    """Write ``model`` (a semantic segmentor, put in eval mode) as an ONNX file, atomically.

    The file is written under a temporary name beside ``path`` and renamed when complete: a failed
    export leaves ``path`` as it was.

    Args:
        model: the segmentor.
        path: output file.
        input_size: (H, W) of the example input (the fixed size unless ``dynamic``); any size of at
            least one pixel (the graph pads to the size divisor itself).
        opset: ONNX opset version.
        dynamic: batch, height and width are free dimensions.
        opset_name: how errors name the opset (the CLI passes ``--opset`` or the config key).
        size_name: how errors name ``input_size``.

    Raises:
        ConfigError: an opset the exporter cannot write, or one too old for an operator of the model.
        ModelError: ``input_size`` too small for the network even padded, or a model that is not
            a semantic segmentor.
        CheckpointError: the file cannot be written (full disk, file size limit, permissions).
    """
    check_opset(opset, opset_name)
    h, w = (int(s) for s in input_size)
    if min(h, w) < 1:
        raise ConfigError(f"{size_name} {[h, w]}: expected [height, width] of at least 1 pixel")
    graph = SegmentationGraph(model).eval()
    path = Path(path)
    example = torch.rand(1, 3, h, w) * 255
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    try:
        with atomic_path(path) as tmp, torch.no_grad(), _quiet_exporter_log():
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_axes=axes if dynamic else None,
                dynamo=False,
            )
    except torch.onnx.errors.OnnxExporterError as exc:
        raise _exporter_error(exc, opset, opset_name) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: could not write the ONNX file ({exc.strerror or exc})") from None
    except (RuntimeError, ValueError) as exc:
        from masklab.inference.inferencer import too_small_reason

        reason = too_small_reason(exc)
        if reason is None:
            raise
        d = SegmentationGraph(model).size_divisor
        padded = f" even padded to {-(-h // d) * d}x{-(-w // d) * d}" if d > 1 else ""
        raise ModelError(
            f"{size_name} {[h, w]}: too small for this model{padded} ({reason}); use a larger size"
        ) from None
    return path


def inference_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits of masklab's inference on (B, 3, H, W) pixel values: the data
    preprocessor (normalise, pad to the size divisor) and ``predict`` (forward, crop), in the
    model's current test mode."""
    from masklab.structures import Batch, SampleMeta

    b, _, h, w = images.shape
    metas = [SampleMeta(image_id=i, ori_shape=(h, w), img_shape=(h, w)) for i in range(b)]
    with torch.no_grad():
        batch = model.data_preprocessor(Batch(images=images.float(), metas=metas), training=False)
        predictions = model(batch, mode="predict")
    return torch.stack([p.logits for p in predictions]).cpu()


def verify_onnx(model: nn.Module, path: str | Path, images: torch.Tensor) -> VerifyReport:
    """Run the ONNX file with ONNX Runtime (CPU) on ``images`` (pixel values) and compare it with
    masklab's own inference on them (:func:`inference_logits`).

    Raises:
        ModelError: ONNX Runtime cannot load or run the file on ``images``, or gives another shape.
    """
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    ort_errors = tuple(
        getattr(ort_state, n)
        for n in ("Fail", "InvalidArgument", "InvalidGraph", "NotImplemented", "RuntimeException")
        if hasattr(ort_state, n)
    )
    expected = inference_logits(model, images).numpy()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"images": images.float().numpy()})
    except ort_errors as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: ONNX Runtime failed on an input of shape {list(images.shape)} ({first[:300]})"
        ) from None
    if got.shape != expected.shape:
        raise ModelError(f"{path}: ONNX output shape {got.shape} differs from masklab's {expected.shape}")
    diff = float(abs(got - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    return VerifyReport(max_abs_diff=diff, label_agreement=agree, shape=tuple(expected.shape))
