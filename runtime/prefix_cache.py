"""What questions about the same views share, kept for the next question: a byte-bounded LRU.

Server engines keep a prompt's keys and values for the next request that starts the same way
(vLLM's automatic prefix caching hashes fixed-size token blocks, SGLang's RadixAttention keeps a
radix tree of token sequences, llama.cpp saves and restores slots). A VLM question's shareable
prefix is its image block (``<|user|>``, the view tags and every image embedding), the largest part
of the prompt, so the key here is content: a hash of the encoder's inputs (the views' pixels and
modality ids) for the encoded views, and of those plus the prefix's token ids for the prefix's keys
and values. An entry is evicted, least recently used first, when a new one would pass the bound;
an entry larger than the whole bound is not kept.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

DEFAULT_PREFIX_CACHE_MB = 256


def content_key(*arrays: np.ndarray) -> str:
    """A hash of the arrays' dtypes, shapes and bytes (blake2b: fast on the megabytes of a view)."""
    digest = hashlib.blake2b(digest_size=20)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def prefix_kv_key(views_key: str, prefix_ids: np.ndarray) -> str:
    """The key of a prompt prefix's keys and values: its views' content hash and its token ids."""
    return f"{views_key}:{content_key(prefix_ids)}"


class PrefixCache:
    """Entries (any value with its size in bytes) under content keys; LRU within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the prefix cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def holds(self, key: str) -> bool:
        """Whether ``key`` has an entry (counted neither as a hit nor a miss, its place kept)."""
        return key in self._entries

    def put(self, key: str, value: Any, nbytes: int) -> bool:
        """Keep ``value``; False (and nothing evicted) when it alone is over the bound."""
        if nbytes > self.max_bytes:
            return False
        if key in self._entries:
            self.nbytes -= self._entries.pop(key)[1]
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self.nbytes -= size
            self.evictions += 1
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def stats(self) -> dict:
        return {"entries": len(self), "mb": round(self.nbytes / (1 << 20), 3),
                "bound_mb": round(self.max_bytes / (1 << 20), 3), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}
