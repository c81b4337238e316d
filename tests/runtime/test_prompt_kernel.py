"""The prompt-kernel probe: a real MatMulNBits of the decoder's shapes, written without the onnx package."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from eov_edge.runtime.prompt_kernel import INT4_ACCURACY_LEVEL, matmul_nbits_probe


@pytest.mark.parametrize("k, n, block_size", [(768, 1280, 32), (256, 48, 64), (200, 48, 32)])  # 200: a last block part-filled
def test_the_probe_is_one_matmul_nbits_onnx_reads_and_onnxruntime_computes(k, n, block_size):
    serialized = matmul_nbits_probe(k, n, block_size, seed=3)
    model = onnx.load_from_string(serialized)
    onnx.checker.check_model(model)
    [node] = model.graph.node
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain) == ("MatMulNBits", "com.microsoft")
    assert attributes == {"K": k, "N": n, "bits": 4, "block_size": block_size, "accuracy_level": INT4_ACCURACY_LEVEL}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    blocks = -(-k // block_size)
    assert weights["B"].shape == (n, blocks, block_size // 2) and weights["scales"].shape == (n * blocks,)

    a = np.random.default_rng(0).standard_normal((1, 5, k)).astype(np.float32)  # (1, S, K)
    y = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    # the same node and weights written by the onnx package give the same bits
    helper = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", **attributes)],
        "reference", [onnx.helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [1, "S", k])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, "S", n])],
        [onnx.numpy_helper.from_array(w, name) for name, w in weights.items()]),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)])
    reference = ort.InferenceSession(helper.SerializeToString(), providers=["CPUExecutionProvider"])
    assert y.shape == (1, 5, n)
    np.testing.assert_array_equal(y, reference.run(None, {"A": a})[0])


def test_the_probe_holds_4_bit_weights_in_matmul_nbits_layout():
    k, n, block_size = 200, 48, 32  # a last block part-filled
    serialized = matmul_nbits_probe(k, n, block_size, seed=1)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(serialized).graph.initializer}
    # two weights a byte, low nibble first, zero point 8, one scale per block of K
    packed, blocks = weights["B"], -(-k // block_size)
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks * block_size)[:, :k].astype(np.float32)
    scale = np.repeat(weights["scales"].reshape(n, blocks), block_size, axis=1)[:, :k]
    dequantized = (q - 8) * scale  # (N, K)
    a = np.random.default_rng(0).standard_normal((1, 5, k)).astype(np.float32)  # (1, S, K)
    options = ort.SessionOptions()
    options.add_session_config_entry("mlas.qnbit.force_fp32", "1")  # fp32 compute (blocks of 32): as numpy's
    y = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    np.testing.assert_allclose(y, a @ dequantized.T, rtol=1e-4, atol=1e-4)
