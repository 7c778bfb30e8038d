"""ONNX export of semantic segmentors, and verification against PyTorch with ONNX Runtime.

The exported graph takes ``images``: (B, 3, H, W) float32 RGB pixel values in 0..255 and returns
``logits``: (B, C, H, W) at the input size. The model's normalisation (mean/std, channel order)
is inside the graph, so a consumer only decodes and stacks images; softmax/argmax is theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from masklab.errors import ModelError


class SegmentationGraph(nn.Module):
    """Pixels in, logits out: the part of a segmentor that belongs in a deployment graph.

    Args:
        model: a segmentor with ``encode_decode(images) -> logits`` and a ``data_preprocessor``
            holding ``mean``/``std`` (and optionally ``bgr_to_rgb``).
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixel values -> (B, C, H, W) logits."""
        if self.bgr_to_rgb:
            images = images.flip(1)
        return self.model.encode_decode((images - self.mean) / self.std)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of comparing ONNX Runtime with PyTorch on one input.

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
            f"onnxruntime vs pytorch on {list(self.shape)}: max |diff| {self.max_abs_diff:.3g}, "
            f"argmax agreement {100 * self.label_agreement:.3f}%"
        )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] = (512, 512),
    opset: int = 17,
    dynamic: bool = False,
) -> Path:
    """Write ``model`` (a semantic segmentor, put in eval mode) as an ONNX file.

    Args:
        model: the segmentor.
        path: output file.
        input_size: (H, W) of the example input (the fixed size unless ``dynamic``).
        opset: ONNX opset version.
        dynamic: batch, height and width are free dimensions.
    """
    graph = SegmentationGraph(model).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 3, *input_size) * 255
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes=axes if dynamic else None,
            dynamo=False,
        )
    return path


def verify_onnx(model: nn.Module, path: str | Path, images: torch.Tensor) -> VerifyReport:
    """Run the ONNX file with ONNX Runtime (CPU) and PyTorch on ``images`` (pixel values) and compare."""
    import onnxruntime as ort

    graph = SegmentationGraph(model).eval()
    with torch.no_grad():
        expected = graph(images.float()).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": images.float().numpy()})
    if got.shape != expected.shape:
        raise ModelError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    diff = float(abs(got - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    return VerifyReport(max_abs_diff=diff, label_agreement=agree, shape=tuple(expected.shape))
