"""CPU dry runs of the engine builder and the TensorRT runner against stand-ins of the tensorrt and
cuda-python modules that accept only the real bindings' names (tests/export/tensorrt_double.py):
what they call, in which order, with which shapes and addresses."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from eov_edge.core import manifest as mf
from eov_edge.core.errors import EngineError
from eov_edge.export.devices import get_device
from eov_edge.export.engine_plan import make_plan
from eov_edge.export.tensorrt_build import build_engines, write_meta
from eov_edge.runtime.generation import KVCache
from eov_edge.runtime.runner import RunnerError
from tests.export.tensorrt_double import install

TENSORRT_10, TENSORRT_11 = "tensorrt-cu12-bindings-10.3.0", "tensorrt-cu12-bindings-11.4.0.106"


def _cuda_answers(compute_capability: tuple[int, int], log: dict) -> dict:
    pointers = iter(range(0x1000, 0x10_0000_0000, 0x10_0000))

    def malloc(nbytes):
        log.setdefault("malloc", []).append(nbytes)
        return 0, next(pointers)

    return {"cudaGetDeviceProperties": lambda device: (0, SimpleNamespace(major=compute_capability[0],
                                                                          minor=compute_capability[1])),
            "cudaStreamCreate": lambda: (0, 7), "cudaMalloc": malloc, "cudaFree": lambda p: (0,),
            "cudaMemcpyAsync": lambda *a: (0,), "cudaMemcpy2DAsync": lambda *a: (0,),
            "cudaStreamSynchronize": lambda s: (0,), "cudaStreamDestroy": lambda s: (0,)}


def _build_answers() -> dict:
    return {"parse_from_file": lambda path: True, "build_serialized_network": lambda network, config: b"engine",
            "serialize": lambda: b"timing cache", "num_errors": 0}


@pytest.mark.parametrize("device, names, version", [("agx-orin", TENSORRT_10, "10.3.0"),
                                                     ("thor", TENSORRT_11, "11.4.0")])
def test_the_builder_calls_only_real_names_with_the_plans_typing_and_profiles(nano_artifacts, tmp_path, monkeypatch,
                                                                             device, names, version):
    plan = make_plan(nano_artifacts, get_device(device), "fp16")
    plan.tensorrt = version  # as eov-export engine plans for the importable TensorRT
    calls, _ = install(monkeypatch, names, version, _build_answers(), _cuda_answers((8, 7), {}))
    for graph in plan.graphs:  # the converted FP16 graphs the build reads; their content is not read here
        graph.onnx_file = graph.onnx_file.replace(".onnx", ".fp16.onnx")
    metas = build_engines(plan, nano_artifacts, tmp_path, converted_dir=tmp_path)
    paths = [path for path, _, _ in calls]
    networks = [args for path, args, _ in calls if path.endswith("create_network")]
    flags = [repr(args[0]) for path, args, _ in calls if path.endswith("set_flag")]
    # strongly typed on both majors, no precision flag: NetworkDefinitionCreationFlag.STRONGLY_TYPED is
    # enumerator 1 in 10.3's NvInfer.h (0 is EXPLICIT_BATCH) and 0 in 11's
    assert networks == [(2,) if version.startswith("10") else (1,)] * 3 and not flags
    shapes = {args[0]: args[1:] for path, args, _ in calls if path.endswith("set_shape")}
    for graph in plan.graphs:
        for profile in graph.profiles:
            for name, rng in profile.shapes.items():
                assert name in shapes  # every input gets its range
        assert (tmp_path / graph.engine_file).read_bytes() == b"engine"
    assert paths.count("trt.Builder().create_optimization_profile") == sum(len(g.profiles) for g in plan.graphs)
    assert [m.tensorrt_version for m in metas] == [version] * 3 and metas[0].compute_capability == [8, 7]
    with pytest.raises(EngineError, match="plan again"):  # a plan for the other major
        plan.tensorrt = "10.3.0" if version.startswith("11") else "11.4.0"
        build_engines(plan, nano_artifacts, tmp_path, converted_dir=tmp_path)


def test_int8_graphs_build_in_the_precision_they_carry(nano_artifacts, tmp_path, monkeypatch):
    """trt-int8 graphs that record what they carry between their Q/DQ pairs (FP16 scales, or FP32 with
    --activations fp32) build strongly typed with no flag on 10.3 and 11; INT8 graphs quantized before
    the recipes recorded it build on 10.3 weakly typed with FP16 and INT8 flags, strongly typed on 11."""
    for names, version, activations, network, expected in (
            (TENSORRT_10, "10.3.0", "float16", (2,), []), (TENSORRT_11, "11.4.0", "float16", (1,), []),
            (TENSORRT_10, "10.3.0", "float32", (2,), []),
            (TENSORRT_10, "10.3.0", "", (0,), ["FP16", "INT8"]), (TENSORRT_11, "11.4.0", "", (1,), [])):
        plan = make_plan(nano_artifacts, get_device("agx-orin"), "fp16")
        plan.tensorrt = version
        for graph in plan.graphs:
            # as a trt-int8 artifacts folder plans (the manifest says what is between the pairs); the
            # graphs are not read here
            graph.precision, graph.activations = "int8", activations
        calls, _ = install(monkeypatch, names, version, _build_answers(), _cuda_answers((8, 7), {}))
        build_engines(plan, nano_artifacts, tmp_path)
        assert [args for path, args, _ in calls if path.endswith("create_network")] == [network] * 3
        flags = [repr(args[0]) for path, args, _ in calls if path.endswith("set_flag")]
        assert flags == [f"<trt.BuilderFlag.{f}>" for f in expected] * 3


@pytest.mark.parametrize("names, version", [(TENSORRT_10, "10.3.0"), (TENSORRT_11, "11.4.0")])
def test_the_stand_in_refuses_a_member_of_another_class_and_gives_real_enum_values(monkeypatch, names, version):
    """What the stand-in holds the code to: BuilderFlag.INT8 exists on 10.3 only (on 11 only DataType
    has INT8); a method of IBuilderConfig is not one of Builder; enum members are worth their C++ values."""
    install(monkeypatch, names, version, _build_answers(), _cuda_answers((8, 7), {}))
    trt = sys.modules["tensorrt"]
    assert int(trt.DataType.INT8) == 2 and int(trt.DataType.HALF) == 1
    if version.startswith("11"):
        with pytest.raises(AttributeError, match="not a member of BuilderFlag"):
            trt.BuilderFlag.INT8
        with pytest.raises(AttributeError, match="not a member of BuilderFlag"):
            trt.BuilderFlag.FP16
        assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    else:
        assert int(trt.BuilderFlag.INT8) == 1 and int(trt.BuilderFlag.FP16) == 0
        assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    with pytest.raises(AttributeError, match="not a member of BuilderFlag"):
        trt.BuilderFlag.INT2
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.TF32)  # IBuilderConfig's, with a member both majors have
    with pytest.raises(AttributeError, match="Builder has no 'set_flag'"):
        builder.set_flag(trt.BuilderFlag.TF32)
    with pytest.raises(AttributeError, match="IBuilderConfig has no 'create_network'"):
        config.create_network(0)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(b"plan")
    context = engine.create_execution_context()
    context.set_input_shape("x", (1, 2))
    with pytest.raises(AttributeError, match="ICudaEngine has no 'set_input_shape'"):
        engine.set_input_shape("x", (1, 2))


def _decoder_runner(nano_artifacts, tmp_path, monkeypatch, log):
    """A TensorRT runner of the decoder over stand-ins: engines.json from a dry build, the engine's
    I/O as the artifacts' graph, set_input_shape answering False outside the decode profile."""
    plan = make_plan(nano_artifacts, get_device("agx-orin"), "fp16", max_batch=1)
    install(monkeypatch, TENSORRT_10, "10.3.0", _build_answers(), _cuda_answers((8, 7), {}))
    write_meta(tmp_path, build_engines(plan, nano_artifacts, tmp_path), plan)
    manifest = mf.load_manifest(nano_artifacts)
    entry = manifest.graphs[mf.DECODER]
    specs = {t.name: t for t in [*entry.inputs, *entry.outputs]}
    decode = plan.graph(mf.DECODER).profiles[1]
    assert decode.name == "decode"
    shapes: dict[str, tuple] = {}

    def set_input_shape(name, shape):
        rng = decode.shapes[name]
        shapes[name] = tuple(shape)
        return all(lo <= d <= hi for lo, d, hi in zip(rng.min, shape, rng.max))

    def tensor_shape(name):  # outputs of one decode step
        batch = shapes[mf.INPUTS_EMBEDS][0]
        if name == mf.LOGITS:
            return (batch, 1, len(np.load(nano_artifacts / manifest.embedding["file"], mmap_mode="r")))
        return (batch, manifest.num_kv_heads, 1, manifest.head_dim)

    names = [t.name for t in [*entry.inputs, *entry.outputs]]
    inputs = {t.name for t in entry.inputs}
    trt_answers = {**_build_answers(), "num_io_tensors": len(names), "get_tensor_name": lambda i: names[i],
                   "get_tensor_dtype": lambda name: np.dtype(specs[name].dtype).type, "nptype": lambda t: t,
                   "set_input_shape": set_input_shape, "get_tensor_shape": tensor_shape,
                   "set_tensor_address": lambda name, pointer: pointer != 0, "execute_async_v3": lambda s: True,
                   "set_optimization_profile_async": lambda i, s: True,
                   "get_tensor_profile_shape": lambda name, i: (decode.shapes[name].min, decode.shapes[name].opt,
                                                               decode.shapes[name].max)}

    def tensor_mode(name):
        trt = sys.modules["tensorrt"]  # the stand-in: its own enum members, compared by name
        return trt.TensorIOMode.INPUT if name in inputs else trt.TensorIOMode.OUTPUT

    trt_answers["get_tensor_mode"] = tensor_mode
    trt_calls, cuda_calls = install(monkeypatch, TENSORRT_10, "10.3.0", trt_answers, _cuda_answers((8, 7), log))
    from eov_edge.runtime.tensorrt_runner import TensorRTRunner

    runner = TensorRTRunner(mf.DECODER, nano_artifacts / entry.file, entry, tmp_path, manifest)
    return runner, manifest, trt_calls, cuda_calls


def test_the_runner_keeps_the_kv_cache_on_the_device_and_appends_each_step_in_order(nano_artifacts, tmp_path,
                                                                                   monkeypatch):
    runner, m, trt_calls, cuda_calls = _decoder_runner(nano_artifacts, tmp_path, monkeypatch, {})
    capacity, prompt = 6, 3
    cache = KVCache(m.num_layers, 1, m.num_kv_heads, m.head_dim, capacity)
    cache.write_prompt([np.zeros((1, m.num_kv_heads, prompt, m.head_dim), np.float32)] * (2 * m.num_layers),
                       np.ones((1, prompt), np.int64))
    width = runner.entry.inputs[0].shape[-1]
    feed = {mf.INPUTS_EMBEDS: np.zeros((1, 1, width), np.float32), mf.ATTENTION_MASK: cache.mask,
            mf.POSITION_IDS: np.full((1, 1), prompt, np.int64), **dict(zip(mf.past_names(m.num_layers), cache.past))}
    outputs = {mf.LOGITS: np.empty((1, 1, 1), np.float32)}  # the stand-in copies nothing into it
    step = runner.bind_decode(feed, outputs, cache, dict(zip(mf.present_names(m.num_layers), mf.past_names(m.num_layers))))
    before = len(cuda_calls)
    for _ in range(capacity - prompt):
        step()
    appends = [args for path, args, _ in cuda_calls[before:] if path == "cudart.cudaMemcpy2DAsync"]
    slot = m.head_dim * 4
    per_step = 2 * m.num_layers
    assert len(appends) == per_step * (capacity - prompt)
    first_past = appends[0][0]
    # step k writes slot prompt + k of every past buffer: destination moves one slot per step
    assert [appends[k * per_step][0] - first_past for k in range(capacity - prompt)] == \
        [k * slot for k in range(capacity - prompt)]
    assert appends[0][1] == capacity * slot and appends[0][3] == slot and appends[0][5] == m.num_kv_heads
    assert cache.length == capacity
    with pytest.raises(RunnerError, match="full"):
        step()
    runs = [path for path, _, _ in trt_calls if path.endswith("execute_async_v3")]
    assert len(runs) == capacity - prompt


def test_a_shape_outside_the_profile_is_refused_with_its_range(nano_artifacts, tmp_path, monkeypatch):
    runner, m, _, _ = _decoder_runner(nano_artifacts, tmp_path, monkeypatch, {})
    width = runner.entry.inputs[0].shape[-1]
    past = np.zeros((2, m.num_kv_heads, 4, m.head_dim), np.float32)  # batch 2: the engines take 1
    feed = {mf.INPUTS_EMBEDS: np.zeros((2, 1, width), np.float32), mf.ATTENTION_MASK: np.ones((2, 5), np.int64),
            mf.POSITION_IDS: np.full((2, 1), 4, np.int64), **{n: past for n in mf.past_names(m.num_layers)}}
    with pytest.raises(RunnerError, match="outside the engine's profile"):
        runner.infer(feed)


def test_a_questions_own_tokens_on_a_shared_prefix_run_in_the_decode_profile(nano_artifacts, tmp_path, monkeypatch):
    """Pipeline.answer_questions feeds each question's suffix on the shared prefix's cache: several
    tokens with a past, which the decode profile takes up to MAX_SUFFIX_TOKENS."""
    from eov_edge.export.engine_plan import MAX_SUFFIX_TOKENS

    runner, m, trt_calls, _ = _decoder_runner(nano_artifacts, tmp_path, monkeypatch, {})
    width = runner.entry.inputs[0].shape[-1]

    def suffix_feed(tokens: int, past_length: int = 4) -> dict:
        past = np.zeros((1, m.num_kv_heads, past_length, m.head_dim), np.float32)
        return {mf.INPUTS_EMBEDS: np.zeros((1, tokens, width), np.float32),
                mf.ATTENTION_MASK: np.ones((1, past_length + tokens), np.int64),
                mf.POSITION_IDS: np.arange(past_length, past_length + tokens, dtype=np.int64)[None],
                **{n: past for n in mf.past_names(m.num_layers)}}

    runner.infer(suffix_feed(5))
    profiles = [args for path, args, _ in trt_calls if path.endswith("set_optimization_profile_async")]
    assert profiles and profiles[-1][0] == runner.profile_names.index("decode")
    with pytest.raises(RunnerError, match="outside the engine's profile"):
        runner.infer(suffix_feed(MAX_SUFFIX_TOKENS + 1))
