"""Artifacts of the shipped nano checkpoint, exported once per test session (about 30 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shipped():
    """The shipped checkpoint as export loads it (fp32, eager attention) and its processor."""
    from eov_edge.export.onnx_export import load_model
    from eov_edge.ship import NANO_CHECKPOINT

    return load_model(NANO_CHECKPOINT, None)


@pytest.fixture(scope="session")
def nano_artifacts(tmp_path_factory, shipped):
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.ship import NANO_CHECKPOINT

    out = tmp_path_factory.mktemp("runtime") / "nano"
    # The export tests validate; here the runtime tests compare against PyTorch themselves.
    export_onnx(out, checkpoint=NANO_CHECKPOINT, model_and_processor=shipped, validate=False)
    return out


@pytest.fixture(scope="session")
def pipeline(nano_artifacts):
    from eov_edge.runtime.pipeline import Pipeline

    with Pipeline.from_artifacts(nano_artifacts, threads=1) as pipe:
        yield pipe
