"""Model export: ONNX (with ONNX Runtime verification) and safetensors weights."""

from masklab.export.onnx import (
    SegmentationGraph,
    VerifyReport,
    check_opset,
    export_onnx,
    inference_logits,
    verify_onnx,
)

__all__ = [
    "SegmentationGraph",
    "VerifyReport",
    "check_opset",
    "export_onnx",
    "inference_logits",
    "verify_onnx",
]
