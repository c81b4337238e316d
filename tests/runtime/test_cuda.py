"""The ONNX Runtime CUDA provider gives the CPU's tokens (needs onnxruntime-gpu and a GPU)."""

import pytest

from tests.gpu import require, skip_unless

pytestmark = [pytest.mark.gpu, skip_unless("gpu", "onnxruntime_cuda")]


def test_cuda_provider_matches_cpu_tokens_on_calib_data(nano_artifacts, pipeline, calib_samples):
    require("gpu", "onnxruntime_cuda")  # a CUDA session opened and run, not a provider listed
    from eov_edge.runtime.pipeline import Pipeline
    from tests.runtime.parity import assert_same_tokens

    with Pipeline.from_artifacts(nano_artifacts, providers=["cuda", "cpu"]) as gpu:
        assert gpu.runners["decoder"].activate().session.get_providers()[0] == "CUDAExecutionProvider"
        assert_same_tokens(gpu, pipeline, calib_samples)
