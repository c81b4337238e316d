"""A runtime Pipeline over the shipped nano artifacts (``nano_artifacts`` lives in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pipeline(nano_artifacts):
    from eov_edge.runtime.pipeline import Pipeline

    with Pipeline.from_artifacts(nano_artifacts, threads=1) as pipe:
        yield pipe
