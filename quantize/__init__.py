"""eov_edge.quantize: recipes for ONNX Runtime's CPU kernels and TensorRT's explicit Q/DQ
(``recipes``), calibration through the FP32 runtime (``calibration``), the per-task accuracy gate
with float fallback (``gate``, ``build``) and the Q/DQ rules TensorRT enforces (``checks``)."""
