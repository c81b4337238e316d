"""What TensorRT's explicit quantization takes, as its ONNX parser enforces it: symmetric Q/DQ
(every zero point 0), constant positive scales, the precisions of the target at an opset that has
them (FP8 >= 19, INT4 >= 21), INT4 only as block-wise constant weights (2-D, blocks along axis 0, K a
multiple of the block), and only operators the parser imports."""

from __future__ import annotations

from pathlib import Path

from eov_edge.export.tensorrt_ops import unsupported_ops

# The opset that first has each Q/DQ data type (onnx TensorProto names).
MIN_OPSET = {"INT8": 10, "FLOAT8E4M3FN": 19, "INT4": 21}

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
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    model = onnx.load(str(path), load_external_data=False)  # a graph's weights can be GBs: read only what is checked
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input[1:3]:  # scale, zero point
                if name in inits and uses_external_data(inits[name]):
                    load_external_data_for_tensor(inits[name], str(Path(path).parent))
    allowed = TARGET_QDQ_TYPES[target]
    problems = []
    for op, count in unsupported_ops(model).items():
        problems.append(f"{count} x {op}: not an operator TensorRT's ONNX parser imports")
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq and expect_qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized graph")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for node in qdq:
        problems += _scale_problems(node, inits)
        scale = inits.get(node.input[1])
        if scale is not None and scale.data_type == onnx.TensorProto.FLOAT16 and opset < 19:
            problems.append(f"{node.name}: an FP16 scale needs opset 19 or later (QuantizeLinear-19), the graph has {opset}")
        dtype = _quantized_type(node, inits)
        if dtype is not None:
            if dtype not in allowed:
                problems.append(f"{node.name}: {dtype} quantization, {target} takes {sorted(allowed)}")
            if opset < MIN_OPSET.get(dtype, 0):
                problems.append(f"{node.name}: {dtype} needs opset {MIN_OPSET[dtype]} or later, the graph has {opset}")
            if dtype == "INT4":
                problems += _int4_block_problems(node, inits)
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: 0 by definition
        zero_point = inits.get(node.input[2])
        if zero_point is None:
            problems.append(f"{node.name}: zero point {node.input[2]!r} is computed, not a constant")
            continue
        values = numpy_helper.to_array(zero_point)
        if np.any(values.astype(np.float32) != 0):
            problems.append(f"{node.name}: non-zero zero point (asymmetric); TensorRT needs symmetric quantization")
    return problems


def _quantized_type(node, inits) -> str | None:
    """The integer or FP8 type of a Q/DQ node: its zero point's, else a DequantizeLinear's constant input's."""
    import onnx

    if len(node.input) >= 3 and node.input[2] in inits:
        return onnx.TensorProto.DataType.Name(inits[node.input[2]].data_type)
    if node.op_type == "DequantizeLinear" and node.input[0] in inits:
        return onnx.TensorProto.DataType.Name(inits[node.input[0]].data_type)
    return None


def _scale_problems(node, inits) -> list[str]:
    from onnx import numpy_helper

    scale = inits.get(node.input[1])
    if scale is None:
        return [f"{node.name}: scale {node.input[1]!r} is computed, not a constant"]
    values = numpy_helper.to_array(scale).astype("float32")
    bad = int((~(values > 0)).sum())  # negative, zero and NaN alike
    if bad:
        return [f"{node.name}: {bad} of {values.size} scales are not positive; TensorRT needs every scale > 0"]
    return []


def _int4_block_problems(node, inits) -> list[str]:
    """INT4 in TensorRT: a DequantizeLinear of a constant 2-D weight, blocks along axis 0."""
    if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return [f"{node.name}: INT4 only as a DequantizeLinear of constant weights (weight-only)"]
    attributes = {a.name: a.i for a in node.attribute}
    dims = list(inits[node.input[0]].dims)
    block = attributes.get("block_size", 0)
    problems = []
    if len(dims) != 2:
        problems.append(f"{node.name}: INT4 weight of shape {dims}; TensorRT takes 2-D (K, N)")
    if attributes.get("axis", 1) != 0:
        problems.append(f"{node.name}: INT4 blocks along axis {attributes.get('axis', 1)}; TensorRT takes axis 0 (K)")
    if block <= 0:
        problems.append(f"{node.name}: INT4 without block_size; TensorRT takes block-wise INT4 only")
    elif dims and dims[0] % block:
        problems.append(f"{node.name}: K = {dims[0]} is not a multiple of the block of {block}")
    return problems
