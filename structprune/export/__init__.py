"""Stage 5b — export: ONNX with dynamic axes and a parity check, ONNX Runtime's transformer fusions
(``optimize=True``), and int8 dynamic quantization."""

from .fusion import FusionReport
from .onnx import OptimizedOnnx, export_onnx, quantize_onnx

__all__ = ["FusionReport", "OptimizedOnnx", "export_onnx", "quantize_onnx"]
