"""The service's parts that need no server: per-key limits."""

import pytest


def test_key_limits_count_each_key_apart():
    from eov_edge.runtime.service import KeyLimits, RateLimited

    limits = KeyLimits(2)
    limits.acquire("a")
    limits.acquire("a")
    with pytest.raises(RateLimited, match="--per-key-limit 2"):
        limits.acquire("a")
    limits.acquire("b")  # another key is not held back
    limits.release("a")
    limits.acquire("a")  # a request answered frees its place
    assert limits.held("a") == 2 and limits.held("b") == 1
    unlimited = KeyLimits(0)
    for _ in range(100):
        unlimited.acquire("a")
