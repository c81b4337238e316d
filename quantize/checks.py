"""What TensorRT's explicit quantization takes: symmetric Q/DQ (every zero point 0), the precisions
of the target, and only operators its ONNX parser imports."""

from __future__ import annotations

from pathlib import Path

from eov_edge.export.tensorrt_ops import unsupported_ops

# Q/DQ data types each TensorRT target accepts (onnx TensorProto names).
TARGET_QDQ_TYPES = {
    "tensorrt": {"INT8"},
    "tensorrt-sm89+": {"FLOAT8E4M3FN"},
    "tensorrt-orin": {"INT4", "INT8"},  # INT4 block-wise weights (DequantizeLinear only)
}


def tensorrt_qdq_problems(path: Path, target: str, expect_qdq: bool = True) -> list[str]:
    """Every reason TensorRT would reject the QDQ graph at ``path`` for ``target`` (empty: none).

    ``expect_qdq=False`` for a graph whose every node fell back to float (then it has no Q/DQ).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {init.name: init for init in model.graph.initializer}
    allowed = TARGET_QDQ_TYPES[target]
    problems = []
    for op, count in unsupported_ops(model).items():
        problems.append(f"{count} x {op}: not an operator TensorRT's ONNX parser imports")
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq and expect_qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized graph")
    for node in qdq:
        if len(node.input) < 3:
            continue  # no zero point: 0 by definition (INT8 output type then needs one; ORT always writes it)
        zero_point = inits.get(node.input[2])
        if zero_point is None:
            problems.append(f"{node.name}: zero point {node.input[2]!r} is computed, not a constant")
            continue
        dtype = onnx.TensorProto.DataType.Name(zero_point.data_type)
        if dtype not in allowed:
            problems.append(f"{node.name}: {dtype} quantization, {target} takes {sorted(allowed)}")
        values = numpy_helper.to_array(zero_point)
        if np.any(values.astype(np.float32) != 0):
            problems.append(f"{node.name}: non-zero zero point (asymmetric); TensorRT needs symmetric quantization")
    return problems
