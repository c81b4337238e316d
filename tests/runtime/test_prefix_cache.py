"""The prefix cache: least recently used out first, never over its byte bound, keys by content."""

import numpy as np
import pytest

from eov_edge.runtime.prefix_cache import PrefixCache, content_key


def test_lru_within_the_byte_bound():
    cache = PrefixCache(max_bytes=100)
    assert cache.put("a", "A", 40) and cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # a is now the most recently used
    assert cache.put("c", "C", 40)  # over the bound: b, the least recently used, goes
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert (cache.nbytes, len(cache), cache.evictions) == (80, 2, 1)
    assert not cache.put("huge", "H", 101)  # alone over the bound: not kept, nothing evicted
    assert (cache.nbytes, len(cache)) == (80, 2)
    assert cache.put("a", "A2", 60)  # replacing an entry frees its old bytes first
    assert cache.get("a") == "A2" and cache.nbytes <= 100
    assert cache.stats()["hits"] == 4 and cache.stats()["misses"] == 1
    with pytest.raises(ValueError, match=">= 0"):
        PrefixCache(-1)
    assert not PrefixCache(0).put("a", "A", 1)  # a zero bound keeps nothing


def test_content_key_sees_bytes_dtype_and_shape():
    a = np.arange(12, dtype=np.float32)
    assert content_key(a) == content_key(a.copy())
    assert content_key(a) != content_key(a.reshape(3, 4))
    assert content_key(a) != content_key(a.astype(np.float64))
    b = a.copy()
    b[5] += 1e-6
    assert content_key(a) != content_key(b)
    assert content_key(a, a) != content_key(a)
