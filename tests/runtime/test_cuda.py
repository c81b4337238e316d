"""The ONNX Runtime CUDA provider gives the CPU's tokens (needs onnxruntime-gpu and a GPU)."""

import pytest

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                reason="needs onnxruntime-gpu and an NVIDIA GPU (pip install 'eov-edge[gpu]')")


def test_cuda_provider_matches_cpu_tokens_on_calib_data(nano_artifacts, pipeline, calib_samples):
    from eov_edge.runtime.pipeline import Pipeline
    from tests.runtime.parity import assert_same_tokens

    with Pipeline.from_artifacts(nano_artifacts, providers=["cuda", "cpu"]) as gpu:
        assert gpu.runners["decoder"].activate().session.get_providers()[0] == "CUDAExecutionProvider"
        assert_same_tokens(gpu, pipeline, calib_samples)
