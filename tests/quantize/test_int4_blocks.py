"""Block-wise INT4 as TensorRT takes it: positive scales, INT4 values in range, and a Q/DQ check that
refuses what TensorRT's ONNX parser refuses."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from eov_edge.quantize.checks import tensorrt_qdq_problems
from eov_edge.quantize.int4_blocks import pack_int4, quantize_blocks, write_w4a16


def test_scales_are_positive_and_values_in_range_whatever_the_sign_of_the_largest_weight():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 6)).astype(np.float32)
    weight[3, 0] = -9.0  # a block whose largest magnitude is negative (ONNX Runtime's scale: negative)
    weight[40:, 5] = 0.0  # an all-zero block
    q, scales = quantize_blocks(weight, 32)
    assert scales.shape == (2, 6) and (scales > 0).all()
    assert q.min() >= -8 and q.max() <= 7 and q[3, 0] == -7
    restored = (q.reshape(2, 32, 6) * scales[:, None, :]).reshape(64, 6)
    assert np.abs(restored - weight).max() <= scales.max() / 2 + 1e-6  # round to nearest
    assert (restored[40:, 5] == 0).all()
    with pytest.raises(ValueError, match="multiple"):
        quantize_blocks(weight[:48], 32)


def test_packing_follows_onnx_int4_layout():
    q = np.array([1, -1, 7, -8, 3], np.int8)
    tensor = helper.make_tensor("q", TensorProto.INT4, [5], pack_int4(q), raw=True)
    assert numpy_helper.to_array(tensor).astype(np.int8).tolist() == q.tolist()


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_w4a16_graph_computes_with_the_dequantized_weights_and_passes_the_check(tmp_path):
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(128, 16)).astype(np.float32)
    model = _matmul_model(weight)
    rewritten, kept = write_w4a16(model, ["mm"], 32)
    assert rewritten == ["mm"] and kept == {}
    assert "w" not in {i.name for i in model.graph.initializer}  # the float weight is gone
    path = tmp_path / "w4.onnx"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    x = rng.normal(size=(2, 128)).astype(np.float32)
    options = ort.SessionOptions()
    # unoptimized: ONNX Runtime would fuse DequantizeLinear + MatMul into its own 4-bit kernel
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    [y] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    q, scales = quantize_blocks(weight, 32)
    dequantized = (q.reshape(4, 32, 16) * scales[:, None, :]).reshape(128, 16)
    # ONNX Runtime reads the packing, the blocks and the axis as written: the product of the dequantized weights
    np.testing.assert_allclose(y, x @ dequantized, rtol=1e-4, atol=1e-4)
    assert tensorrt_qdq_problems(path, "tensorrt-orin") == []


def _edit_dq(path, out, edit):
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(out))
    return tensorrt_qdq_problems(out, "tensorrt-orin")


def test_the_check_refuses_what_tensorrt_refuses(tmp_path):
    model = _matmul_model(np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32))
    write_w4a16(model, ["mm"], 32)
    good = tmp_path / "good.onnx"
    onnx.save(model, str(good))

    def negate_one_scale(m):
        scale = next(i for i in m.graph.initializer if i.name.endswith("_scale"))
        values = numpy_helper.to_array(scale).copy()
        values[0, 0] = -values[0, 0]
        scale.CopyFrom(numpy_helper.from_array(values, scale.name))

    def old_opset(m):
        m.opset_import[0].version = 19

    def along_axis_1(m):
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
        next(a for a in dq.attribute if a.name == "axis").i = 1

    def nonzero_zero_point(m):
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
        m.graph.initializer.append(helper.make_tensor("zp", TensorProto.INT4, [2, 8], pack_int4(np.ones(16, np.int8)),
                                                      raw=True))
        dq.input.append("zp")

    cases = {"1 of 16 scales are not positive": negate_one_scale, "needs opset 21": old_opset,
             "axis 1": along_axis_1, "non-zero zero point": nonzero_zero_point}
    for expected, edit in cases.items():
        problems = _edit_dq(good, tmp_path / "bad.onnx", edit)
        assert any(expected in p for p in problems), (expected, problems)
    assert any("INT4" in p for p in tensorrt_qdq_problems(good, "tensorrt"))  # INT8-only target
