"""Block-wise INT4 weights as TensorRT takes them: ``DequantizeLinear`` with positive scales.

TensorRT's ONNX parser imports weight-only INT4 as a constant INT4 ``DequantizeLinear`` feeding a
MatMul, and refuses it unless every scale is positive ("Scale coefficients must all be positive"),
every zero point is 0 (or absent), the weight is 2-D with its blocks along axis 0 (K) and K is a
multiple of the block, at opset 21 or later. ONNX Runtime's symmetric 4-bit quantizer keeps the sign
of each block's largest weight in the scale (q = -8 for it), so about half of its scales are
negative; this module quantizes the weights itself:

    scale = amax(|w| over the block) / 7        (K/block, N), > 0
    q     = clip(round(w / scale), -8, 7)       (K, N) INT4

A block of zeros gets scale 1 (any positive scale represents it exactly).
"""

from __future__ import annotations

import numpy as np

INT4_OPSET = 21  # INT4 tensors and DequantizeLinear's block_size
INT4_MIN, INT4_MAX = -8, 7


def quantize_blocks(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """weight (K, N) float, K a multiple of ``block`` -> q (K, N) int8 holding INT4 values, scales
    (K/block, N) float32, all positive."""
    k, n = weight.shape
    if k % block:
        raise ValueError(f"K = {k} is not a multiple of the block of {block}")
    blocks = weight.astype(np.float32).reshape(k // block, block, n)  # (K/b, b, N)
    amax = np.abs(blocks).max(axis=1)  # (K/b, N)
    scales = np.where(amax > 0, amax / INT4_MAX, 1.0).astype(np.float32)  # (K/b, N)
    q = np.clip(np.rint(blocks / scales[:, None, :]), INT4_MIN, INT4_MAX).astype(np.int8)  # (K/b, b, N)
    return q.reshape(k, n), scales


def pack_int4(q: np.ndarray) -> bytes:
    """INT4 values (any shape, int8 in [-8, 7]) as ONNX raw data: two per byte, the element with the
    even flat index in the low nibble; an odd count leaves the last high nibble 0."""
    flat = q.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def write_w4a16(model, nodes: list[str], block: int) -> tuple[list[str], dict[str, str]]:
    """Rewrite ``model`` (an onnx ModelProto, weights loaded) in place: the constant 2-D weight of each
    MatMul named in ``nodes`` becomes INT4 blocks + positive scales through a DequantizeLinear
    (axis 0, ``block_size``); the opset is raised to 21. Returns the nodes rewritten and, for the
    ones kept in float, why."""
    import onnx
    from onnx import helper, numpy_helper

    wanted = set(nodes)
    initializers = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    new_nodes, rewritten, kept = [], [], {}
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if node.name not in wanted:
            new_nodes.append(node)
            continue
        if weight is None or len(weight.dims) != 2:
            kept[node.name] = "not a MatMul with a constant 2-D weight"
        elif weight.dims[0] % block:
            kept[node.name] = f"K = {weight.dims[0]} is not a multiple of the block of {block}"
        if node.name in kept:
            new_nodes.append(node)
            continue
        q, scales = quantize_blocks(numpy_helper.to_array(weight), block)
        q_name, scale_name, dq_out = f"{weight.name}_int4", f"{weight.name}_int4_scale", f"{weight.name}_int4_dq"
        model.graph.initializer.append(helper.make_tensor(q_name, onnx.TensorProto.INT4, list(q.shape),
                                                          pack_int4(q), raw=True))
        model.graph.initializer.append(numpy_helper.from_array(scales, scale_name))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, scale_name], [dq_out],
                                          name=f"{node.name}_DQ_int4", axis=0, block_size=block))
        node.input[1] = dq_out
        new_nodes.append(node)
        rewritten.append(node.name)
        consumers[weight.name] -= 1
        if consumers[weight.name] == 0:  # the float weight is no longer read
            model.graph.initializer.remove(initializers[weight.name])
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < INT4_OPSET:
            opset.version = INT4_OPSET
    return rewritten, kept
