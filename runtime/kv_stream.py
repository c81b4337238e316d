"""Sequences through ONNX Runtime's fused CPU decoder (``decoder_kind`` "ort-cpu"), shared by the
plain decode loop (:class:`~eov_edge.runtime.generation.Decoder`) and the speculative one.

The graph's contract (``export/ort_decoder.py``): one KV buffer per layer and kind, bound as both
``past`` and ``present``; GroupQueryAttention writes the keys and values of the positions fed at each
row's length and attends to nothing beyond it. So the cache is these buffers plus one number per row,
held in the form the graph reads: ``seqlens_k`` (B,) and ``total_sequence_length`` (), views of one
int32 buffer that stays bound. A row's length (positions that hold its sequence) is
``seqlens_k + 1`` after a call; before the next call of ``fed`` tokens both counters move by ``fed``.
Rolling back is setting the length: positions past it are overwritten by the next call and never
read before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.errors import PromptError


@dataclass
class PrefixKV:
    """The keys and values of a prompt prefix several rows share: 2L arrays (KV, P, hd) float32, in
    the decoder's past order. Computed once, copied into each row's cache slots 0..P-1."""

    arrays: list[np.ndarray]

    @property
    def length(self) -> int:
        return int(self.arrays[0].shape[1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


LAST_POSITION = np.array([-1], np.int64)  # logits_index: logits of the last fed position only (read only)
LAST_POSITION.flags.writeable = False


class FusedKVStream:
    """``batch`` rows through a decoder's shared KV buffers of ``capacity`` positions.

    ``decoder``: a :class:`~eov_edge.runtime.generation.Decoder` over an ORT CPU decoder (its runner,
    prompt runner, embedding table and manifest). ``cache``: another stream's buffers to read and write
    (a speculative draft on the FP32 cache: one architecture, one set of buffers).
    """

    def __init__(self, decoder, batch: int, capacity: int, cache: list[np.ndarray] | None = None) -> None:
        m = decoder.manifest
        self.runner = decoder.runner
        self.prefill_runner = decoder.prefill_runner  # the prompt: the same runner, or its prefill session
        self.table = decoder.embed_table  # (V, D) float32 or float16
        self.past_names, self.present_names = decoder.past_names, decoder.present_names
        self.batch, self.capacity = batch, capacity
        self.cache = cache if cache is not None else \
            [np.zeros((batch, m.num_kv_heads, capacity, m.head_dim), np.float32) for _ in self.past_names]
        # seqlens_k (B,) and total_sequence_length (), views of one buffer: bound once, moved in place
        self.counters = np.zeros(batch + 1, np.int32)
        self.seqlens, self.total = self.counters[:batch], self.counters[batch:].reshape(())
        self._counter_view = memoryview(self.counters)
        self._calls: dict[tuple[int, bool], tuple] = {}
        self._bound: list[tuple[dict, dict]] = []

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cache)

    @property
    def lengths(self) -> np.ndarray:
        """(B,) positions of each row that hold its sequence."""
        return self.seqlens.astype(np.int64) + 1

    @property
    def length(self) -> int:
        """Batch 1: the positions that hold the sequence (a Python int: the speculative loop reads and
        sets it every round, where numpy calls cost more than the arithmetic)."""
        return self._counter_view[0] + 1

    @length.setter
    def length(self, value: int) -> None:
        if not 1 <= value <= self.capacity:
            raise ValueError(f"length {value} outside 1..{self.capacity}")
        self._counter_view[0] = value - 1
        self._counter_view[1] = value

    def set_lengths(self, lengths) -> None:
        """Make each row's sequence its first ``lengths`` positions (a roll-back, or a draft joining
        the target's cache)."""
        lengths = np.asarray(lengths, np.int64).reshape(self.batch)
        if (lengths < 1).any() or (lengths > self.capacity).any():
            raise ValueError(f"lengths {lengths.tolist()} outside 1..{self.capacity}")
        self.seqlens[:] = lengths - 1
        self.total[...] = lengths.max()

    def prepare(self, fed: int) -> None:
        """Set the counters for a call that feeds ``fed`` tokens to every row."""
        if self.batch == 1:  # the speculative loop's every call: scalar arithmetic, no numpy
            if self.length + fed > self.capacity:
                raise ValueError(f"KV cache of {self.capacity} positions is full")
            self.length += fed
            return
        if int(self.seqlens.max()) + 1 + fed > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions is full")
        self.seqlens += fed
        self.total[...] = int(self.seqlens.max()) + 1

    def prepare_one(self) -> None:
        """:meth:`prepare` for one token per row, without a numpy call (the plain loop's every step;
        its capacity is sized for the whole answer, so no check): a few Python increments are
        cheaper than a numpy call on the caches a decode step leaves cold."""
        view = self._counter_view
        for i in range(len(view)):
            view[i] += 1

    def prefill(self, inputs_embeds: np.ndarray, lengths: np.ndarray, logits: np.ndarray,
                next_tokens: np.ndarray, shared_prefix: int = 0, prefix_kv: PrefixKV | None = None
                ) -> PrefixKV | None:
        """Feed the prompts from an empty cache: inputs_embeds (B, S, D) left padded, lengths (B,)
        real tokens per row; writes each row's last-position logits into ``logits`` (B, 1, V) and its
        argmax into ``next_tokens`` (B, 1). Rows are fed unpadded (the buffers hold each from slot 0),
        consecutive rows of one length together.

        ``shared_prefix`` P > 0: every row's first P real tokens are the same (questions about the
        same views). They are fed once, for row 0 (or taken from ``prefix_kv``, computed earlier),
        copied into every row's slots 0..P-1, and each row's suffix is fed on top (row by row: see
        below). Returns the
        prefix's keys and values (for a prefix cache), else None."""
        if (lengths < 1).any():
            raise PromptError("a prompt row has no tokens (its attention mask is all zero)")
        prompt_length = inputs_embeds.shape[1]
        no_ids = np.zeros((self.batch, 0), np.int64)  # (B, 0): prompts come as embeddings only
        if shared_prefix:
            if not 0 < shared_prefix < int(lengths.min()):
                raise ValueError(f"shared prefix {shared_prefix} must leave every row a token of its own")
            filled = 0  # rows whose slots already hold the prefix
            if prefix_kv is None:
                first = prompt_length - int(lengths[0])  # row 0's first real token
                self._feed(inputs_embeds[0:1, first:first + shared_prefix], 0, 1, shared_prefix, no_ids,
                           np.empty((1, 1, logits.shape[-1]), np.float32), np.empty((1, 1), np.int64))
                prefix_kv = PrefixKV([c[0, :, :shared_prefix].copy() for c in self.cache])
                filled = 1
            elif prefix_kv.length != shared_prefix:
                raise ValueError(f"cached prefix of {prefix_kv.length} positions for a prefix of {shared_prefix}")
            for buffer, prefix in zip(self.cache, prefix_kv.arrays):
                buffer[filled:, :, :shared_prefix] = prefix  # (B, KV, P, hd) <- (KV, P, hd)
        start = 0
        while start < self.batch:
            length = int(lengths[start])
            end = start + 1
            # GroupQueryAttention takes several tokens on top of a cache for one row at a time
            # (ONNX Runtime: "batch_size must be 1 when sequence_length > 1 and past context is given")
            while not shared_prefix and end < self.batch and lengths[end] == length:
                end += 1
            # (rows, S_fed, D): the suffix after the shared prefix (the whole prompt without one)
            self._feed(inputs_embeds[start:end, prompt_length - length + shared_prefix:], start, end, length, no_ids,
                       logits[start:end], next_tokens[start:end])
            start = end
        self.set_lengths(lengths)
        return prefix_kv if shared_prefix else None

    def prefill_row(self, row: int, embeds: np.ndarray, logits: np.ndarray, next_tokens: np.ndarray,
                    prefix: int = 0, prefix_kv: PrefixKV | None = None) -> PrefixKV | None:
        """Row ``row`` alone takes the prompt ``embeds`` (1, S, D) from its slot 0, the other rows
        untouched (a request joining a running batch); writes its last logits (1, 1, V) and argmax
        (1, 1) and sets its length to S. ``prefix`` P > 0: its first P positions are the keys and
        values ``prefix_kv`` (computed earlier), or fed first and returned (for a prefix cache); the
        rest is fed on top."""
        length = embeds.shape[1]
        no_ids = np.zeros((self.batch, 0), np.int64)
        computed = None
        if prefix and prefix_kv is None:
            self._feed(embeds[:, :prefix], row, row + 1, prefix, no_ids, logits, next_tokens)
            computed = PrefixKV([c[row, :, :prefix].copy() for c in self.cache])
        elif prefix:
            if prefix_kv.length != prefix:
                raise ValueError(f"cached prefix of {prefix_kv.length} positions for a prefix of {prefix}")
            for buffer, part in zip(self.cache, prefix_kv.arrays):
                buffer[row, :, :prefix] = part  # (KV, P, hd)
        self._feed(embeds[:, prefix:], row, row + 1, length, no_ids, logits, next_tokens)
        self.seqlens[row] = length - 1
        return computed

    def _feed(self, embeds: np.ndarray, start: int, end: int, length: int, no_ids: np.ndarray,
              logits: np.ndarray, next_tokens: np.ndarray) -> None:
        """Rows start..end-1 take ``embeds`` (rows, S, D) as their positions length-S..length-1."""
        feed = {mf.INPUTS_EMBEDS: np.ascontiguousarray(embeds, dtype=np.float32),
                mf.SEQLENS_K: np.full(end - start, length - 1, np.int32),
                mf.TOTAL_SEQUENCE_LENGTH: np.array(length, np.int32),
                mf.LOGITS_INDEX: LAST_POSITION, mf.INPUT_IDS: no_ids[start:end], mf.EMBED_TABLE: self.table}
        rows = [c[start:end] for c in self.cache]  # (rows, KV, C, hd) views into the shared buffers
        feed.update(zip(self.past_names, rows))
        outputs = {mf.LOGITS: logits, mf.NEXT_TOKENS: next_tokens, **dict(zip(self.present_names, rows))}
        self.prefill_runner.infer(feed, outputs=outputs)

    def bind(self, input_ids: np.ndarray, logits: np.ndarray, logits_index: np.ndarray,
             next_tokens: np.ndarray, rows: int | None = None):
        """One bound call that feeds ``input_ids`` (B, S) (the graph gathers their embeddings) at the
        rows' lengths and writes ``logits`` (B, K, V) at ``logits_index`` (K,) and their argmax into
        ``next_tokens`` (B, K) (the same buffer as ``input_ids`` makes a step's argmax the next
        step's input). ``rows`` R: the call runs rows 0..R-1 only (arrays of R rows; continuous
        batching). Every array is bound by address: keep them alive while the call may run."""
        rows = self.batch if rows is None else rows
        cache = [c[:rows] for c in self.cache]  # (R, KV, C, hd) views
        feed = {mf.INPUTS_EMBEDS: np.empty((rows, 0, self.table.shape[1]), np.float32), mf.INPUT_IDS: input_ids,
                mf.SEQLENS_K: self.seqlens[:rows], mf.TOTAL_SEQUENCE_LENGTH: self.total,
                mf.LOGITS_INDEX: logits_index, mf.EMBED_TABLE: self.table, **dict(zip(self.past_names, cache))}
        outputs = {mf.LOGITS: logits, mf.NEXT_TOKENS: next_tokens, **dict(zip(self.present_names, cache))}
        self._bound.append((feed, outputs))  # bound by address: every array lives as long as the stream
        return self.runner.bind(feed, outputs)

    def feed(self, token_ids: list[int], every_position: bool) -> np.ndarray:
        """Batch 1: feed tokens after the row's length; logits (S, V) of each fed position if
        ``every_position``, else (1, V) of the last: a view of a bound output buffer, which the next
        call of the same shape overwrites. One binding per (count, every_position), kept."""
        key = (len(token_ids), every_position)
        if key not in self._calls:
            fed = len(token_ids)
            ids = np.zeros((1, fed), np.int64)
            index = np.arange(fed, dtype=np.int64) if every_position else LAST_POSITION
            logits = np.empty((1, len(index), len(self.table)), np.float32)  # (1, K, V)
            next_tokens = np.empty((1, len(index)), np.int64)  # the graph's argmax, unread here
            self._calls[key] = (self.bind(ids, logits, index, next_tokens), ids, logits)
        call, ids, logits = self._calls[key]
        for i, token in enumerate(token_ids):
            ids[0, i] = token
        self.prepare(len(token_ids))
        call()
        return logits[0]
