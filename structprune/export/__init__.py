"""Stage 5b — export: ONNX with dynamic axes and a parity check, and int8 dynamic quantization."""

from .onnx import export_onnx, quantize_onnx

__all__ = ["export_onnx", "quantize_onnx"]
