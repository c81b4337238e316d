"""The fused-KV stream both ORT CPU decode loops use: several positions at once equal one at a time,
lengths roll back, the counters are what GroupQueryAttention reads, and a full cache is refused."""

import numpy as np
import pytest

from eov_edge.runtime.kv_stream import FusedKVStream
from eov_edge.runtime.pipeline import Pipeline


def _prefilled(decoder, prompt, capacity=40):
    stream = FusedKVStream(decoder, 1, capacity)
    logits = np.empty((1, 1, len(decoder.embed_table)), np.float32)
    stream.prefill(prompt, np.array([prompt.shape[1]]), logits, np.empty((1, 1), np.int64))
    return stream, logits[:, 0].copy()


def test_several_positions_fed_on_a_filled_cache_match_one_at_a_time(nano_fused_artifacts):
    """What a speculative check relies on: five positions fed at once after a prompt give, at each
    position (logits_index), the logits of feeding them one by one, write the same cache slots, and
    rolling the length back ignores what was written beyond it."""
    pipe = Pipeline.from_artifacts(nano_fused_artifacts)
    tokens = [17, 230, 1024, 5, 99]
    prompt = np.random.default_rng(0).standard_normal((1, 20, pipe.embed_table.shape[1])).astype(np.float32) * 0.05
    (one, first), (chunk, first_again) = _prefilled(pipe.decoder, prompt), _prefilled(pipe.decoder, prompt)
    np.testing.assert_array_equal(first_again, first)
    assert one.lengths.tolist() == [20] and one.seqlens.tolist() == [19] and int(one.total) == 20
    stepwise = np.concatenate([one.feed([t], every_position=False).copy() for t in tokens])  # (5, V)
    together = chunk.feed(tokens, every_position=True)  # (5, V)
    assert together.shape == stepwise.shape == (5, len(pipe.embed_table))
    np.testing.assert_allclose(together, stepwise, atol=1e-4, rtol=0)  # a GEMM instead of five GEMVs
    assert one.lengths.tolist() == chunk.lengths.tolist() == [25]
    for a, b in zip(one.cache, chunk.cache):
        np.testing.assert_allclose(a[:, :, :25], b[:, :, :25], atol=1e-5, rtol=0)
    chunk.set_lengths([22])  # keep the first two; the three slots after them now hold stale keys and values
    fresh, _ = _prefilled(pipe.decoder, prompt)
    fresh.feed(tokens[:2], every_position=False)
    np.testing.assert_allclose(chunk.feed([7], every_position=False), fresh.feed([7], every_position=False),
                               atol=1e-4, rtol=0)


def test_counters_move_together_and_a_full_cache_is_refused(nano_fused_artifacts):
    pipe = Pipeline.from_artifacts(nano_fused_artifacts)
    stream = FusedKVStream(pipe.decoder, 3, 12)
    stream.set_lengths([4, 9, 2])
    assert stream.seqlens.tolist() == [3, 8, 1] and int(stream.total) == 9
    stream.prepare_one()  # one token per row: seqlens_k is each row's cached count, total the longest + 1
    assert stream.seqlens.tolist() == [4, 9, 2] and int(stream.total) == 10
    stream.prepare(2)
    assert stream.lengths.tolist() == [7, 12, 5] and int(stream.total) == 12
    with pytest.raises(ValueError, match="full"):
        stream.prepare(1)
    with pytest.raises(ValueError, match="outside"):
        stream.set_lengths([0, 3, 3])
