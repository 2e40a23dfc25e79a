"""Stage 5b — export: ONNX with dynamic axes and a parity check, ONNX Runtime's transformer fusions
(``optimize=True``), int8 dynamic quantization, and onnxruntime sessions set up for the result."""

from .fusion import FusionReport
from .onnx import OptimizedOnnx, export_onnx, onnx_session, quantize_onnx

__all__ = ["FusionReport", "OptimizedOnnx", "export_onnx", "onnx_session", "quantize_onnx"]
