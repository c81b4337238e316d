"""Calibration feeds of the shipped nano artifacts (``nano_artifacts`` lives in tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def calibration(nano_artifacts):
    from eov_edge.quantize.calibration import calibration_set

    return calibration_set(nano_artifacts)
