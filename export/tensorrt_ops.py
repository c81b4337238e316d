"""ONNX operators TensorRT 10's ONNX parser imports (onnx-tensorrt ``docs/operators.md`` and its
``onnxOpImporters.cpp``), and a check that an exported graph uses nothing else.

Restrictions that depend on attributes (e.g. Conv weights must be initializers, Q/DQ zero points
must be 0) are checked where they matter (quantization); this catches a new op creeping into a
graph after a model or exporter change, long before a user's engine build on a Jetson fails.
"""

from __future__ import annotations

from collections import Counter

TENSORRT_ONNX_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GroupNormalization GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


def unsupported_ops(model) -> Counter:
    """Op types (with counts) of ``model`` (an onnx.ModelProto) that TensorRT cannot import."""
    found = Counter(node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx"))
    found.update(f"{node.domain}::{node.op_type}" for node in model.graph.node if node.domain not in ("", "ai.onnx"))
    return Counter({op: n for op, n in found.items() if op not in TENSORRT_ONNX_OPS})
