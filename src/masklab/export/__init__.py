"""Model export: ONNX (with ONNX Runtime verification) and safetensors weights."""

from masklab.export.onnx import SegmentationGraph, VerifyReport, export_onnx, verify_onnx

__all__ = ["SegmentationGraph", "VerifyReport", "export_onnx", "verify_onnx"]
