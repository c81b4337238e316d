"""Quantization tests reuse the runtime tests' artifacts of the shipped nano checkpoint."""

import pytest

from tests.runtime.conftest import nano_artifacts, shipped  # noqa: F401  (session fixtures)


@pytest.fixture(scope="session")
def calibration(nano_artifacts):  # noqa: F811
    from eov_edge.quantize.calibration import calibration_set

    return calibration_set(nano_artifacts)
