"""Shared fixtures. Tests needing the shared real data skip on a fresh clone without it, and fail
in CI (EOV_REQUIRE_DATA=1), where skipping them would hide a broken data path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# In-process eov-run / eov-bench tests ask for ONNX Runtime's shared thread pool, after which ORT
# refuses every per-session pool in the worker (onnxruntime.quantization's own sessions included).
os.environ.setdefault("EOV_THREAD_POOL", "session")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from eov_edge.core.paths import calib_dir, data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_dir()
    if not (root / "README.md").is_file():
        message = f"shared real data not found at {root} (set EOV_DATA_DIR)"
        if os.environ.get("EOV_REQUIRE_DATA") == "1":
            pytest.fail(message + "; EOV_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python (the llama.cpp peer and GGUF quantizer): skipped without it on a developer's
    machine, a failure in CI (EOV_REQUIRE_DATA=1), whose .ci/run installs it."""
    try:
        import llama_cpp
    except ImportError as err:
        message = f"llama-cpp-python is not installed ({err}); pip install 'eov-edge[bench]'"
        if os.environ.get("EOV_REQUIRE_DATA") == "1":
            pytest.fail(message + "; CI (EOV_REQUIRE_DATA=1) installs it and forbids skipping")
        pytest.skip(message)
    return llama_cpp


@pytest.fixture(scope="session")
def calib_root() -> Path:
    return calib_dir()


@pytest.fixture(scope="session")
def calib_samples():
    from eov_edge.core.calib import load_calib_samples

    return {s.id: s for s in load_calib_samples()}


# The shipped nano checkpoint and its ONNX artifacts, exported once per test session (about 30 s);
# runtime, quantization and engine tests share them.
@pytest.fixture(scope="session")
def shipped():
    """The shipped checkpoint as export loads it (fp32, eager attention) and its processor."""
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.model.processor import load_model

    return load_model(NANO_CHECKPOINT, None)


@pytest.fixture(scope="session")
def nano_artifacts(tmp_path_factory, request):
    """The shipped nano's FP32 artifacts: exported here, or ``$EOV_NANO_ARTIFACTS`` (exported on another
    machine: a Jetson's device check has no PyTorch, whose transformers needs Python 3.11)."""
    import os

    given = os.environ.get("EOV_NANO_ARTIFACTS")
    if given:
        from eov_edge.core import manifest as mf

        manifest = mf.load_manifest(given)  # every file against its sha256
        assert manifest.model_config.get("preset") == "nano", f"{given} holds {manifest.model_config.get('preset')}"
        return Path(given)
    shipped = request.getfixturevalue("shipped")
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("runtime") / "nano"
    # The export tests validate; here the runtime tests compare against PyTorch themselves.
    export_onnx(out, checkpoint=NANO_CHECKPOINT, model_and_processor=shipped, validate=False)
    return out



# Property tests: no per-example deadline (2 shared cores are slow to warm up), and in CI a
# derandomized search so a red build is reproducible.
from hypothesis import settings  # noqa: E402

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("EOV_REQUIRE_DATA") == "1" else "dev")


@pytest.fixture(scope="session")
def nano_fused_artifacts(tmp_path_factory, shipped):
    """The shipped checkpoint with ONNX Runtime's fused CPU decoder (--decoder ort-cpu), validated:
    graph parity against transformers' forward and 20 token-for-token comparisons with generate()."""
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("fused") / "nano"
    export_onnx(out, checkpoint=NANO_CHECKPOINT, model_and_processor=shipped, decoder="ort-cpu")
    return out
