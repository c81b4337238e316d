"""Quantization recipes: one per target, each built on the field's own quantizers.

| recipe         | graphs            | how                                                   | library                     |
|----------------|-------------------|-------------------------------------------------------|-----------------------------|
| ort-cpu-int8   | all three         | dynamic INT8 (weights per channel, activations at run) | onnxruntime.quantization     |
| ort-cpu-int4   | decoder           | weight-only 4-bit MatMulNBits (block 32 by default,     | onnxruntime MatMulNBits      |
|                |                   | symmetric)                                             |                             |
| trt-int8       | all three         | static QDQ, symmetric INT8, weights per channel,       | onnxruntime.quantize_static  |
|                |                   | activations per tensor, calibrated on calib_data       |                             |
| trt-fp8        | all three         | static QDQ, FLOAT8 E4M3 (compute capability >= 8.9)     | onnxruntime.quantize_static  |
| w4a16          | decoder           | 4-bit block-wise weights as DequantizeLinear (QDQ),    | onnxruntime MatMulNBits (QDQ)|
|                |                   | activations stay float (FP16 in the TensorRT engine)    |                             |

Only MatMuls with a constant 2-D weight are quantized: the attention products, norms, softmax and
the vision stem's convolutions stay in float by construction, and the LM head (the MatMul whose weight
has the vocabulary as a dimension) is excluded by default, as DESIGN.md section 6 asks.

The INT4 recipes take a block size (``with_int4_block_size``): one fp scale per this many weights
along the input dimension. Smaller blocks are more accurate; larger ones store fewer scales and run
faster on CPU, because MatMulNBits with int8 compute pays per block, not per weight (``small``, one
decode step: blocks of 128 about 0.7x the time of 32). The default stays 32 because ONNX Runtime's
4-bit kernels (1.32, x86) give a row the same result whatever shares its call only in blocks of 32:
in larger blocks a row of a batch, or a prompt fed in two parts, rounds differently from the same
row alone, so the manifest marks such artifacts batch-variant (``Manifest.batch_invariant``) and the
runtime decodes each of their answers alone. ``--int4-block-size 128`` is the faster choice for one
stream at a time. The accuracy gate decides whether a size holds.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from eov_edge.core import manifest as mf
from eov_edge.quantize.calibration import CalibrationSet, QuantizeError


@dataclass(frozen=True)
class Recipe:
    name: str
    graphs: tuple[str, ...]
    precision: str  # what the manifest records for quantized graphs
    target: str
    needs_calibration: bool
    default_max_drop: float  # accuracy budget in points
    for_tensorrt: bool = False
    description: str = ""
    quantize_lm_head: bool = False  # default for the LM head (DESIGN.md keeps it in float for TensorRT)
    quantize_conv: bool = False  # the vision stem's convolutions (dynamic INT8 only: ConvInteger)
    embedding_dtype: str = "float32"  # the token embedding table the runtime gathers from
    int4_block_size: int | None = None  # weights per scale along the input dimension (INT4 recipes)
    # FP16 activations between the Q/DQ pairs (FP16 scales, opset 19; norms, softmax and rotary angles
    # kept FP32): what a strongly typed TensorRT build runs, and so what the gate scores
    fp16_activations: bool = False


# MatMulNBits accepts power-of-two blocks of at least 16 weights; 32 is also ORT GenAI's default
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_INT4_BLOCK_SIZE = 32
# the largest 4-bit MatMulNBits block whose rows do not depend on what shares their call (module docstring)
ROW_EXACT_INT4_BLOCK_SIZE = 32


def with_int4_block_size(recipe: Recipe, block_size: int | None) -> Recipe:
    """``recipe`` with its INT4 blocks of ``block_size`` weights (None: the recipe's own)."""
    if block_size is None:
        return recipe
    if recipe.int4_block_size is None:
        raise QuantizeError(f"{recipe.name} has no INT4 blocks; a block size applies to "
                            f"{', '.join(n for n, r in RECIPES.items() if r.int4_block_size)} only")
    if block_size not in INT4_BLOCK_SIZES:
        raise QuantizeError(f"INT4 block size {block_size} is not one of {INT4_BLOCK_SIZES}")
    return replace(recipe, int4_block_size=block_size)


def with_activations(recipe: Recipe, activations: str | None) -> Recipe:
    """``recipe`` with FP16 (``"fp16"``) or FP32 (``"fp32"``) activations between its Q/DQ pairs
    (None: the recipe's own). FP32 keeps what FP16 rounding flips out of the engine (the fallback
    puts quantized nodes back in float, not the FP16 activations around them), at TensorRT's FP32 speed."""
    if activations is None:
        return recipe
    if activations not in ("fp16", "fp32"):
        raise QuantizeError(f"--activations is fp16 or fp32, not {activations!r}")
    if not recipe.for_tensorrt or recipe.int4_block_size:
        raise QuantizeError(f"{recipe.name} has no Q/DQ activations to choose; --activations applies to "
                            f"{', '.join(n for n, r in RECIPES.items() if r.fp16_activations)} only")
    return replace(recipe, fp16_activations=activations == "fp16")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    # The vision stem's convolutions stay float: ONNX Runtime's CPU ConvInteger ran 2.5x (small's
    # 16-px patch embedding) to 4.4x (nano's convolutional stem) slower than its float Conv here,
    # making nano's INT8 encoder slower than its FP32 one, for ~1% of the weights.
    Recipe("ort-cpu-int8", (mf.ENCODER, mf.PROJECTOR, mf.DECODER), "int8-dynamic", "onnxruntime-cpu", False, 1.0,
           description="dynamic INT8 MatMuls, LM head included, the vision stem's convolutions in float, FP16 "
                       "embedding table: the fastest INT8 path of ONNX Runtime on CPU",
           quantize_lm_head=True, embedding_dtype="float16"),
    Recipe("ort-cpu-int4", (mf.DECODER,), "int4-weight-only", "onnxruntime-cpu", False, 2.0,
           description="4-bit weight-only decoder MatMuls (MatMulNBits), FP16 embedding table",
           quantize_lm_head=True, embedding_dtype="float16", int4_block_size=DEFAULT_INT4_BLOCK_SIZE),
    Recipe("trt-int8", (mf.ENCODER, mf.PROJECTOR, mf.DECODER), "int8-qdq", "tensorrt", True, 1.0, True,
           "explicit symmetric INT8 QDQ for TensorRT, FP16 between the Q/DQ pairs", fp16_activations=True),
    Recipe("trt-fp8", (mf.ENCODER, mf.PROJECTOR, mf.DECODER), "fp8-e4m3-qdq", "tensorrt-sm89+", True, 1.0, True,
           "FLOAT8 E4M3 QDQ for TensorRT on compute capability >= 8.9, FP16 between the Q/DQ pairs (ORT CPU "
           "emulates it)", fp16_activations=True),
    Recipe("w4a16", (mf.DECODER,), "int4-weight-qdq", "tensorrt-orin", False, 2.0, True,
           "4-bit block-wise weights as DequantizeLinear, float activations (FP16 engine on Orin)",
           int4_block_size=DEFAULT_INT4_BLOCK_SIZE),
)}


@dataclass
class GraphPlan:
    """Which nodes of one graph a recipe quantizes."""

    quantizable: list[str]  # MatMuls with a constant 2-D weight, in graph order
    lm_head: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # kept in float (LM head, fallbacks)

    @property
    def quantized(self) -> list[str]:
        return [n for n in self.quantizable if n not in self.excluded]


def plan_graph(path: Path, vocab_size: int, keep_lm_head: bool = True, include_conv: bool = False) -> GraphPlan:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    quantizable, lm_head = [], []
    for node in model.graph.node:
        if node.op_type == "Conv" and include_conv and len(weights.get(node.input[1], ())) == 4:
            quantizable.append(node.name)
            continue
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        shape = weights.get(node.input[1])
        if shape is None or len(shape) != 2:
            continue  # activation x activation (attention) or batched weights: stays float
        quantizable.append(node.name)
        if vocab_size in shape:
            lm_head.append(node.name)
    if not quantizable:
        raise QuantizeError(f"{path.name}: no MatMul with a constant weight to quantize")
    return GraphPlan(quantizable, lm_head, list(lm_head) if keep_lm_head else [])


def recipe_plans(recipe: Recipe, artifacts: Path, quantize_lm_head: bool | None = None) -> dict[str, GraphPlan]:
    """The plan of every graph ``recipe`` quantizes in ``artifacts``, with the recipe's defaults for
    the LM head and the vision stem's convolutions (``quantize_lm_head`` overrides the first)."""
    vocab = mf.load_manifest(artifacts, verify_hashes=False).embedding["shape"][0]
    lm_head = recipe.quantize_lm_head if quantize_lm_head is None else quantize_lm_head
    return {g: plan_graph(Path(artifacts) / mf.GRAPH_FILES[g], vocab, keep_lm_head=not lm_head,
                          include_conv=recipe.quantize_conv) for g in recipe.graphs}


def _library_versions() -> dict:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def quantize_graph(recipe: Recipe, graph: str, source: Path, target: Path, plan: GraphPlan,
                   calibration: CalibrationSet | None) -> dict:
    """Write the quantized ``graph`` (from FP32 ``source``) to ``target``; returns what made it."""
    runner: Callable = {
        "ort-cpu-int8": _dynamic_int8, "ort-cpu-int4": _matmul_nbits, "w4a16": _w4a16,
        "trt-int8": _static_qdq, "trt-fp8": _static_qdq,
    }[recipe.name]
    if not plan.quantized:
        shutil.copyfile(source, target)
        return {"tool": "none (every node kept in float)", "quantized_nodes": [], "float_nodes": plan.excluded}
    with tempfile.TemporaryDirectory(prefix="eov-quant-") as tmp, _quiet_ort_advice():
        info = runner(recipe, graph, source, Path(tmp) / "q.onnx", plan, calibration)
        produced = Path(tmp) / "q.onnx"
        if not produced.is_file():
            raise QuantizeError(f"{recipe.name}: the quantizer wrote no graph for {graph}")
        if recipe.fp16_activations:
            from eov_edge.export.tensorrt_build import FP16_QDQ_OPSET, convert_to_fp16

            convert_to_fp16(produced, Path(tmp) / "q16.onnx")
            produced = Path(tmp) / "q16.onnx"
            info = {**info, "activation_dtype": "float16",
                    "activations": f"float16 between the Q/DQ pairs (FP16 scales, opset {FP16_QDQ_OPSET}); "
                                   "norms, softmax and rotary angles in float32"}
        elif recipe.for_tensorrt and not recipe.int4_block_size:
            info = {**info, "activation_dtype": "float32", "activations": "float32 between the Q/DQ pairs"}
        shutil.move(str(produced), target)
    return {**info, **_library_versions(), "quantized_nodes": plan.quantized, "float_nodes": plan.excluded}


class _DropAdvice(logging.Filter):
    """onnxruntime.quantization logs this advice on the root logger for every graph; our graphs are
    already shape-inferred and optimized by the exporter, so it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _quiet_ort_advice():
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def _dynamic_int8(recipe, graph, source, target, plan, calibration) -> dict:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: ONNX shape inference cannot type the outputs of ORT's contrib ops (the
    # fused CPU decoder); every activation of our graphs is float32.
    quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                     nodes_to_quantize=plan.quantized, per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT})
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per channel",
            "activations": "int8 dynamic per tensor"}


def _matmul_nbits(recipe, graph, source, target, plan, calibration) -> dict:
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from eov_edge.runtime.prompt_kernel import INT4_ACCURACY_LEVEL  # the level the runtime's probe times

    model = onnx.load(str(source))
    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=recipe.int4_block_size, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL,
        nodes_to_exclude=plan.excluded, quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",),
    )  # default algorithm: round-to-nearest per block
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    done = sum(n.op_type == "MatMulNBits" for n in onnx.load(str(target), load_external_data=False).graph.node)
    info = {"tool": "onnxruntime.quantization.matmul_nbits_quantizer (RTN)",
            "weights": f"int4 block {recipe.int4_block_size} symmetric",
            "block_size": recipe.int4_block_size,
            "activations": f"float, int8 compute (accuracy_level {INT4_ACCURACY_LEVEL})",
            "format": "MatMulNBits", "nodes_rewritten": done,
            "rows_exact": recipe.int4_block_size <= ROW_EXACT_INT4_BLOCK_SIZE}
    if graph == mf.DECODER:
        # accuracy_level 4 (activations quantized to int8 per block, int8 dot products) is the fast
        # kernel for one token, but for a prompt the fp32 kernel on the same 4-bit weights has been
        # the faster one in blocks of 32 (small, 2 cores: a 200-token prefill 144 -> 130 ms, 90
        # tokens 64 -> 54; one decode step 1.6x slower; benchmarks/ort_cpu_kernels.py). ONNX Runtime
        # picks the kernel per session (mlas.qnbit.force_fp32, onnxruntime >= 1.32): the runtime
        # opens a second session for prompts.
        info["activations"] = (f"float; int8 compute (accuracy_level {INT4_ACCURACY_LEVEL}) in decode steps, "
                               "fp32 compute in prompts")
        info[mf.PREFILL_SESSION_CONFIG] = {"mlas.qnbit.force_fp32": "1"}
    return info


def _w4a16(recipe, graph, source, target, plan, calibration) -> dict:
    """Block-wise INT4 weights as TensorRT's parser takes them (quantize/int4_blocks.py)."""
    import onnx

    from eov_edge.quantize.int4_blocks import INT4_OPSET, write_w4a16

    model = onnx.load(str(source))
    rewritten, kept = write_w4a16(model, plan.quantized, recipe.int4_block_size)
    if kept:
        raise QuantizeError(f"w4a16 cannot quantize {kept}; keep those nodes in float")
    onnx.save(model, str(target))
    return {"tool": "eov_edge.quantize.int4_blocks (round to nearest, scale = block amax / 7)",
            "weights": f"int4 block {recipe.int4_block_size} symmetric, positive scales",
            "block_size": recipe.int4_block_size, "opset": INT4_OPSET,
            "activations": "float (fp16 on the TensorRT engine)", "format": "DequantizeLinear (QDQ)",
            "nodes_rewritten": len(rewritten)}


E4M3_MAX = 448.0  # largest finite FLOAT8 E4M3FN value


def _activation_amax(source: Path, reader) -> dict[str, float]:
    """Absolute max of every MatMul/Gemm input over the calibration feeds (ORT's MinMax calibrator)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="eov-amax-") as tmp:
        calibrator = create_calibrator(source, ["MatMul", "Gemm"], augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        reader.rewind()
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    import numpy as np

    return {name: max(float(np.abs(np.asarray(data.range_value, dtype=np.float64)).max()), 1e-8)
            for name, data in ranges.items()}


def _static_qdq(recipe, graph, source, target, plan, calibration) -> dict:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None:
        raise QuantizeError(f"{recipe.name} needs calibration data")
    fp8 = recipe.name == "trt-fp8"
    qtype = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
    reader = calibration.reader(graph)
    reader.rewind()
    options = {"ActivationSymmetric": True, "WeightSymmetric": True,
               # TensorRT fuses a Q/DQ pair per consumer; shared pairs block its fusions
               "DedicatedQDQPair": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    if fp8:
        # ORT quantizes to FLOAT8 only from histograms (Distribution), and its histogram collector
        # cannot stack feeds of different shapes (prefill vs decode, 1 vs 3 views): calibrate one
        # feed per call (CalibStridedMinMax=1, FeedReader.set_range); histograms accumulate.
        # Its thresholds (mean + k std) clip the outliers of the residual stream (decoder output
        # error 0.62 vs 0.05 for INT8 MinMax on nano), so every activation range is overridden with
        # the measured absolute max, as FP8 recipes do (max calibration; E4M3 keeps precision near 0).
        import numpy as np
        from ml_dtypes import float8_e4m3fn  # onnxruntime's own FP8 dependency

        options["CalibStridedMinMax"] = 1
        options["TensorQuantOverrides"] = {  # ORT takes explicit scale + zero point for FLOAT8, not ranges
            name: [{"scale": np.array(amax / E4M3_MAX, np.float32), "zero_point": np.array(0, float8_e4m3fn)}]
            for name, amax in _activation_amax(source, reader).items()
        }
        reader.rewind()
    method = CalibrationMethod.Distribution if fp8 else CalibrationMethod.MinMax
    quantize_static(
        str(source), str(target), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=plan.quantized, per_channel=True, activation_type=qtype, weight_type=qtype,
        calibrate_method=method, extra_options=options,
    )
    return {"tool": "onnxruntime.quantization.quantize_static (QDQ)", "calibration": method.name,
            "calibration_feeds": len(reader),
            "weights": "fp8 e4m3 per tensor" if fp8 else "int8 symmetric per channel",
            "activations": "fp8 e4m3 per tensor" if fp8 else "int8 symmetric per tensor"}
