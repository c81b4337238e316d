"""Build TensorRT engines from an :class:`EnginePlan` with the TensorRT Python API, and write the
engine metadata (``eov_edge.runtime.engine_meta``) that the runtime checks before it loads one.

Written against TensorRT 10.3 (JetPack 6) and 11.x: ``Builder`` -> ``create_network`` (strongly typed
on 11, where it is the only mode, and on 10.x for FP32, FP16 and w4a16 graphs, which carry their
precision; INT8/FP8 on 10.x weakly typed with builder flags) -> ``OnnxParser.parse_from_file`` ->
``IBuilderConfig`` (workspace pool limit, precision flags for weak typing only, timing cache, one
optimization profile per plan profile) -> ``build_serialized_network``. TensorRT
cannot be installed on our build machines; everything before ``import tensorrt`` is tested on CPU.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

from eov_edge.core import manifest as mf
from eov_edge.core.errors import EngineError
from eov_edge.core.paths import write_atomic, write_json_atomic
from eov_edge.export.engine_plan import EnginePlan, GraphEnginePlan
from eov_edge.runtime.engine_meta import META_FILE, META_VERSION, EngineMeta


def write_meta(directory: Path, metas: list[EngineMeta], plan: EnginePlan) -> None:
    data = {"meta_version": META_VERSION, "engines": [asdict(m) for m in metas], "plan": json.loads(plan.to_json()),
            "built_on": platform.platform()}
    write_json_atomic(directory / META_FILE, data)


# Ops whose FP16 result is wrong, not just rounded, and which cost little: norm reductions (x^2 passes
# 65504 once |x| > 256), softmax and its exponentials, and the rotary angles (a position of 1000 times
# a frequency is off by ~0.5 rad in FP16). They stay FP32 in FP16 graphs, with casts around them.
FP32_OPS = ("Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Reciprocal", "LayerNormalization",
            "Exp", "Log", "Cos", "Sin", "Range", "CumSum")


def rotary_nodes(graph) -> list[str]:
    """Every node that feeds a Cos or Sin: the position and angle arithmetic of rotary embeddings."""
    producer = {out: node for node in graph.node for out in node.output}
    todo = [node for node in graph.node if node.op_type in ("Cos", "Sin")]
    seen: dict[str, None] = {}
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen[node.name] = None
        todo += [producer[name] for name in node.input if name in producer]
    return list(seen)


def _sort_topologically(graph) -> None:
    """Reorder ``graph``'s nodes so that every input is produced before it is read; among the nodes
    ready at a time, the original order (Kahn's algorithm over a heap of node indices)."""
    import heapq

    nodes = list(graph.node)
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    waiting = [0] * len(nodes)  # inputs still to be produced, per node
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in set(node.input):
            if name in producer:
                waiting[index] += 1
                readers.setdefault(producer[name], []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(index)
        for reader in readers.get(index, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(ordered) != len(nodes):
        stuck = next(nodes[i].name for i in range(len(nodes)) if waiting[i])
        raise EngineError(f"the FP16 graph has a cycle near {stuck}")
    copies = [type(nodes[i])() for i in ordered]
    for copy, index in zip(copies, ordered):
        copy.CopyFrom(nodes[index])
    del graph.node[:]
    graph.node.extend(copies)


# Q/DQ with FP16 scales (so FP16 on both sides of the pair) first appears in QuantizeLinear-19
FP16_QDQ_OPSET = 19


def convert_to_fp16(source: Path, target: Path, external_threshold: int = 512 * 2**20) -> None:
    """FP16 copy of a graph for a strongly typed build (a graph builds in the precision it carries),
    inputs and outputs kept FP32, :data:`FP32_OPS` and the rotary math in FP32. Quantized graphs get
    FP16 scales, so the activations between their Q/DQ pairs are FP16 too (TensorRT infers a
    DequantizeLinear's output type from its scale's): a Q/DQ graph below opset 19 is first converted
    to opset 19, whose QuantizeLinear takes FP16 input and scales. Weights over ``external_threshold``
    are written as external data beside it."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))  # with its external data, if any
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if has_qdq and opset < FP16_QDQ_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, FP16_QDQ_OPSET)
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
                                         node_block_list=rotary_nodes(model.graph))
    _sort_topologically(converted.graph)  # the converter appends the input casts after their readers
    del converted.graph.value_info[:]  # stale types of tensors the casts changed; re-inferred by readers
    external = sum(init.ByteSize() for init in converted.graph.initializer) > external_threshold
    onnx.save(converted, str(target), save_as_external_data=external, all_tensors_to_one_file=True,
              location=target.name + ".data")


def prepare_onnx(plan: EnginePlan, artifacts: Path, out: Path) -> EnginePlan:
    """Graphs to build in FP16 are converted (``<graph>.fp16.onnx`` in ``out``), on every TensorRT:
    strongly typed builds take the precision the graph carries."""
    for graph in plan.graphs:
        # fp16, and w4a16's "a16": FP16 activations around the INT4 weights. INT8 and FP8 Q/DQ graphs stay
        # as exported (opset < 19 has no FP16 QuantizeLinear): FP32 between their Q/DQ pairs on 11.
        if plan.graph_strongly_typed(graph) and graph.precision in ("fp16", "w4a16"):
            target = out / graph.onnx_file.replace(".onnx", ".fp16.onnx")
            convert_to_fp16(artifacts / graph.onnx_file, target)
            graph.onnx_file, graph.onnx_sha256 = target.name, mf.sha256_file(target)
    return plan


def check_tensorrt_major(plan: EnginePlan, installed: str) -> None:
    """A plan is for one TensorRT major: 11 builds strongly typed only (no FP16/INT8/FP8 builder flags),
    10.x builds INT8/FP8 weakly typed with them. Refuse a plan made for the other one."""
    if int(installed.split(".")[0]) != int(plan.tensorrt.split(".")[0]):
        raise EngineError(f"the engine plan is for TensorRT {plan.tensorrt}, the installed TensorRT is {installed}; "
                          "plan again where this TensorRT is installed (eov-export engine plans for the importable "
                          "TensorRT)")


def build_engines(plan: EnginePlan, onnx_dir: Path, out: Path, verbose: bool = False,
                  converted_dir: Path | None = None) -> list[EngineMeta]:
    """Build every graph's engine into ``out``; needs TensorRT and a GPU of the plan's kind. FP16
    conversions (``*.fp16.onnx``) are read from ``converted_dir``."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineError("TensorRT is not importable here; build on the device (eov-export engine there, or "
                          "--trtexec-script for a device with only JetPack's trtexec)") from None
    check_tensorrt_major(plan, trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = out / plan.timing_cache
    metas = []
    for graph in plan.graphs:
        source_dir = converted_dir if converted_dir and graph.onnx_file.endswith(".fp16.onnx") else onnx_dir
        metas.append(_build_one(trt, builder, logger, plan, graph, Path(source_dir), out, cache_path))
    return metas


def _build_one(trt, builder, logger, plan: EnginePlan, graph: GraphEnginePlan, onnx_dir: Path, out: Path,
               cache_path: Path) -> EngineMeta:
    strongly_typed = plan.graph_strongly_typed(graph)
    # STRONGLY_TYPED is bit 1 on 10.3 and bit 0 on 11 (EXPLICIT_BATCH, bit 0 on 10.x, is gone): ask the enum
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_dir / graph.onnx_file)):  # external data is found beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {graph.onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    if graph.precision == "fp32":  # the reference engine: FP32 MatMuls, not TF32's 10-bit mantissa
        config.clear_flag(trt.BuilderFlag.TF32)
    elif not strongly_typed:  # INT8/FP8 on TensorRT 10.x: precision from builder flags around the Q/DQ nodes
        config.set_flag(trt.BuilderFlag.FP16)  # gone in TensorRT 11 (tests/export/test_tensorrt_api.py)
        config.set_flag(trt.BuilderFlag.INT8 if graph.precision == "int8" else trt.BuilderFlag.FP8)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for profile_plan in graph.profiles:
        profile = builder.create_optimization_profile()
        for name, rng in profile_plan.shapes.items():
            profile.set_shape(name, rng.min, rng.opt, rng.max)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {graph.graph}; rerun with --verbose for the builder log")
    engine_path = out / graph.engine_file
    write_atomic(engine_path, bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    major, minor = _compute_capability()
    return EngineMeta(graph.graph, graph.engine_file, mf.sha256_file(engine_path), trt.__version__, [major, minor],
                      plan.device, graph.precision, [asdict(p) for p in graph.profiles], graph.onnx_file,
                      graph.onnx_sha256, graph.source_sha256)


def _compute_capability() -> tuple[int, int]:
    from cuda.bindings import runtime as cudart  # cuda-python (the [trt] extra)

    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise EngineError(f"cudaGetDeviceProperties failed ({err}); is a GPU visible?")
    return int(props.major), int(props.minor)
