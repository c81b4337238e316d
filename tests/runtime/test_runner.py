"""The runner interface with ONNX Runtime: lazy sessions, feed checks, timing, providers."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from eov_edge.core import manifest as mf
from eov_edge.runtime.backends import make_runner
from eov_edge.runtime.ort_runner import OrtRunner
from eov_edge.runtime.runner import RunnerError


@pytest.fixture(scope="module")
def projector(nano_artifacts):
    manifest = mf.load_manifest(nano_artifacts)
    entry = manifest.graphs[mf.PROJECTOR]
    return nano_artifacts / entry.file, entry


def features(entry, views=2):
    dim = entry.inputs[0].shape[-1]
    tokens = entry.inputs[0].shape[1]
    return np.random.default_rng(0).standard_normal((views, tokens, dim)).astype(np.float32)


def test_lazy_session_timing_and_context_manager(projector):
    path, entry = projector
    runner = OrtRunner(mf.PROJECTOR, path, entry)
    assert not runner.active and runner.session is None  # nothing loaded until first use
    out = runner.infer({mf.FEATURES: features(entry)})
    assert runner.active and len(runner.timings) == 1 and runner.timings[0] > 0
    assert out[mf.IMAGE_EMBEDS].shape[0] == 2
    with OrtRunner(mf.PROJECTOR, path, entry) as again:
        np.testing.assert_array_equal(again.infer({mf.FEATURES: features(entry)})[mf.IMAGE_EMBEDS],
                                      out[mf.IMAGE_EMBEDS])
    assert not again.active and again.session is None


def test_preallocated_outputs_are_written_in_place(projector):
    path, entry = projector
    runner = OrtRunner(mf.PROJECTOR, path, entry)
    expected = runner.infer({mf.FEATURES: features(entry, 3)})[mf.IMAGE_EMBEDS]
    buffer = np.zeros_like(expected)
    out = runner.infer({mf.FEATURES: features(entry, 3)}, outputs={mf.IMAGE_EMBEDS: buffer})
    assert out[mf.IMAGE_EMBEDS] is buffer
    np.testing.assert_array_equal(buffer, expected)


def test_bound_call_sees_buffers_refilled_in_place(projector):
    path, entry = projector
    runner = OrtRunner(mf.PROJECTOR, path, entry)
    first, second = features(entry, 2), features(entry, 2)[::-1].copy()
    expected = [runner.infer({mf.FEATURES: f})[mf.IMAGE_EMBEDS] for f in (first, second)]
    buffer_in = first.copy()
    buffer_out = np.zeros_like(expected[0])
    call = runner.bind({mf.FEATURES: buffer_in}, {mf.IMAGE_EMBEDS: buffer_out})
    timed = len(runner.timings)
    assert call()[mf.IMAGE_EMBEDS] is buffer_out
    np.testing.assert_array_equal(buffer_out, expected[0])
    buffer_in[...] = second  # refilled in place: the same binding reads the new values
    call()
    np.testing.assert_array_equal(buffer_out, expected[1])
    assert len(runner.timings) == timed + 2
    with pytest.raises(RunnerError, match="float64"):  # checked once, when bound
        runner.bind({mf.FEATURES: first.astype(np.float64)}, {mf.IMAGE_EMBEDS: buffer_out})


@pytest.mark.parametrize("feed, message", [
    ({}, "missing"),
    ({mf.FEATURES: np.zeros((1, 4, 4), np.float64)}, "float64"),
    ({mf.FEATURES: np.zeros((4, 4), np.float32)}, "rank"),
    ({mf.FEATURES: [[1.0]]}, "numpy array"),
])
def test_bad_feeds_get_clear_errors(projector, feed, message):
    path, entry = projector
    with pytest.raises(RunnerError, match=message):
        OrtRunner(mf.PROJECTOR, path, entry).infer(feed)


def test_fixed_and_named_axes_are_checked(nano_artifacts):
    manifest = mf.load_manifest(nano_artifacts)
    entry = manifest.graphs[mf.DECODER]
    runner = OrtRunner(mf.DECODER, nano_artifacts / entry.file, entry)
    dim, heads, head_dim = manifest.embedding["shape"][1], manifest.num_kv_heads, manifest.head_dim
    feed = {mf.INPUTS_EMBEDS: np.zeros((1, 3, dim), np.float32), mf.ATTENTION_MASK: np.ones((1, 3), np.int64),
            mf.POSITION_IDS: np.zeros((2, 3), np.int64)}  # batch 2 here, 1 elsewhere
    feed.update((n, np.zeros((1, heads, 0, head_dim), np.float32)) for n in mf.past_names(manifest.num_layers))
    with pytest.raises(RunnerError, match="axis 'batch'|axis 'batch"):
        runner.check_feed(feed)
    feed[mf.POSITION_IDS] = np.zeros((1, 3), np.int64)
    feed[mf.INPUTS_EMBEDS] = np.zeros((1, 3, dim + 1), np.float32)
    with pytest.raises(RunnerError, match=f"is {dim + 1}, the graph takes {dim}"):
        runner.check_feed(feed)


def test_missing_graph_and_unavailable_provider(projector, tmp_path):
    path, entry = projector
    with pytest.raises(RunnerError, match="missing"):
        OrtRunner(mf.PROJECTOR, tmp_path / "gone.onnx", entry).activate()
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the unavailable-provider error cannot be provoked")
    with pytest.raises(RunnerError, match="onnxruntime-gpu"):
        OrtRunner(mf.PROJECTOR, path, entry, providers=["cuda"]).activate()
    with pytest.raises(RunnerError, match="unknown backend"):
        make_runner("tflite", mf.PROJECTOR, path, entry)


def test_corrupt_graph_file(projector, tmp_path):
    path, entry = projector
    broken = tmp_path / "projector.onnx"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RunnerError, match="cannot load"):
        OrtRunner(mf.PROJECTOR, broken, entry).activate()


SHARED_POOL_SCRIPT = """
import json, sys
import onnxruntime as ort
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.pipeline import Pipeline
from eov_edge.runtime.ort_runner import session_options
from eov_edge.core.calib import load_calib_samples
from eov_edge.core.inputs import Sample

pipe = Pipeline.from_artifacts(sys.argv[1], thread_pool="shared", threads=2)
views = load_calib_samples()[1].read(size=pipe.spec.image_size)
[answer] = pipe.answer(views, task="caption", generation=GenerationConfig(max_new_tokens=12))
# Later eov-edge sessions in this process join the shared pool (ONNX Runtime refuses any other).
ort.InferenceSession(str(pipe.directory / "projector.onnx"), session_options(), providers=["CPUExecutionProvider"])
print(json.dumps(answer.token_ids))
"""


def test_shared_thread_pool_gives_the_same_tokens(nano_artifacts, pipeline, calib_samples):
    import json
    import os
    import subprocess
    import sys

    from eov_edge.core.calib import load_calib_samples
    from eov_edge.runtime.generation import GenerationConfig

    env = {k: v for k, v in os.environ.items() if k != "EOV_THREAD_POOL"}  # the shared pool for real
    out = subprocess.run([sys.executable, "-c", SHARED_POOL_SCRIPT, str(nano_artifacts)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    views = load_calib_samples()[1].read(size=pipeline.spec.image_size)
    [answer] = pipeline.answer(views, task="caption", generation=GenerationConfig(max_new_tokens=12))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == answer.token_ids
    with pytest.raises(RunnerError, match="thread_pool"):
        OrtRunner("x", nano_artifacts / "projector.onnx", None, thread_pool="global")


def test_tensorrt_backend_is_lazy_and_says_what_it_needs(projector, tmp_path):
    path, entry = projector
    with pytest.raises(RunnerError, match="engine folder"):
        make_runner("tensorrt", mf.PROJECTOR, path, entry)
    runner = make_runner("tensorrt", mf.PROJECTOR, path, entry, engine_dir=tmp_path)
    assert not runner.active  # created without TensorRT installed
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RunnerError, match="tensorrt and cuda-python"):
            runner.activate()


LOAD_GRAPH = """
import sys
from pathlib import Path

import eov_edge.runtime.ort_runner as ort_runner
from eov_edge.core.manifest import GraphEntry

if sys.argv[2] == "rising":  # glibc's own threshold, as before the runner held it
    ort_runner._set_mmap_threshold = lambda size: False

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

runner = ort_runner.OrtRunner("decoder", Path(sys.argv[1]), GraphEntry(Path(sys.argv[1]).name, "", [], []), threads=1)
start = rss_mib()
runner.activate()
print(rss_mib() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mmap threshold: other C libraries manage freed blocks their own way")
def test_a_loaded_decoder_keeps_its_packed_weights_not_the_freed_originals(nano_artifacts):
    """ONNX Runtime packs each MatMul weight and frees the original; with glibc's rising threshold
    the freed originals stayed resident. The nano decoder's session, each way, in a fresh process."""
    entry = mf.load_manifest(nano_artifacts, verify_hashes=False).graphs[mf.DECODER]

    def grown(mode: str) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", LOAD_GRAPH, str(nano_artifacts / entry.file), mode],
                             capture_output=True, text=True, env=env, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    held, rising = grown("held"), grown("rising")
    assert held < 0.85 * rising, (held, rising)  # measured 27 against 36 MiB (15 MiB of weights)
