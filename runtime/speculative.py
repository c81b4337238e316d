"""Speculative decoding: a quantized draft of the same model proposes tokens, the FP32 decoder checks
them several at a time, and the answer stays the FP32 decoder's own.

Why: at batch 1 every FP32 decode step streams all the decoder's weights from memory for one token
(the bandwidth floor, ``eov-bench``'s ``decode_vs_floor``). Fed k+1 positions at once, the same
weights serve all of them for about the price of one step. So a cheap draft (the ``ort-cpu-int8``
or ``ort-cpu-int4`` artifacts of the same checkpoint, 3-4x faster per step) proposes k tokens one by
one, and one FP32 call gives the logits at every proposed position.

Exactness: every token is chosen from the FP32 decoder's logits by the plain loop's own rule
(:class:`~eov_edge.runtime.token_choice.GreedyRule`: argmax, EOS masked before ``min_new_tokens``, the
SLIS grammar and its expected locations, the reported probabilities). A draft token only decides
which positions the check computes: the first position where the draft differs from that choice
ends the round, with the FP32 choice in its place. So the tokens are those of the plain FP32 loop
whatever the draft proposes (tested with a draft of other weights); the draft only changes how
many FP32 calls they take. Logits of a position checked among k+1 differ from the one-token step's
by float rounding (a GEMM instead of a GEMV, ~1e-5 on nano), as any batching does.

Scope: batch 1 (ONNX Runtime's GroupQueryAttention takes several new positions on top of a filled
cache only for one row; the batch-1 answer is also where latency matters) and greedy decoding.
Sampling, the grammar without expected locations, and batches run the plain loop unchanged.

The cache: one KV buffer per layer and kind, shared between ``past`` and ``present`` (the ORT CPU
decoder's contract, ``export/ort_decoder.py``), and a length; one set of buffers for both decoders
(one architecture: the draft is a quantization of the same checkpoint). The draft needs no prefill
of its own and reads the FP32 keys and values of everything kept so far; what it writes at the
positions it proposes from, the FP32 check then overwrites. Positions beyond the length hold stale
keys and values of rejected proposals; the next call overwrites them and attention never reads past
the length given, so rolling back is setting the length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.errors import EOVError
from eov_edge.runtime.generation import Decoder
from eov_edge.runtime.token_choice import GenerationConfig, GreedyRule, Step, stack_steps

DEFAULT_DRAFT_TOKENS = 4


class SpeculativeError(EOVError, ValueError):
    """The draft cannot serve this decoder (other model, other decoder kind)."""


@dataclass
class SpeculativeStats:
    """What one generation's drafts did: ``rounds`` FP32 checks, ``drafted`` tokens proposed,
    ``accepted`` of them kept. Tokens per FP32 call = (accepted + rounds) / rounds."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance": round(self.acceptance, 4) if self.drafted else None}


class CacheStream:
    """One row's sequence through an ORT CPU decoder: its shared KV buffers, its length, and one
    bound call per (tokens fed, logits wanted) shape, so a round reuses bindings and buffers."""

    def __init__(self, decoder: Decoder, capacity: int, cache: list[np.ndarray] | None = None) -> None:
        """``cache``: another stream's buffers to read and write (a draft on the FP32 cache)."""
        m = decoder.manifest
        self.runner = decoder.runner
        self.prefill_runner = decoder.prefill_runner  # the prompt (Decoder: the same runner, or its prefill session)
        self.table = decoder.embed_table  # (V, D) float32 or float16
        self.past_names, self.present_names = decoder.past_names, decoder.present_names
        self.cache = cache if cache is not None else \
            [np.zeros((1, m.num_kv_heads, capacity, m.head_dim), np.float32) for _ in self.past_names]
        self.capacity = capacity
        self.length = 0  # positions of the cache that hold the sequence
        # seqlens_k (1,) and total_sequence_length (), views of one buffer, set before each call
        self.counters = np.zeros(2, np.int32)
        self._calls: dict[tuple[int, bool], tuple] = {}

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cache)

    def _feed(self, embeds: np.ndarray, ids: np.ndarray | None, index: np.ndarray | None) -> dict[str, np.ndarray]:
        feed = {mf.INPUTS_EMBEDS: embeds, mf.SEQLENS_K: self.counters[:1],
                mf.TOTAL_SEQUENCE_LENGTH: self.counters[1:].reshape(())}
        feed.update({mf.LOGITS_INDEX: index, mf.INPUT_IDS: ids, mf.EMBED_TABLE: self.table})
        feed.update(zip(self.past_names, self.cache))
        return feed

    def _outputs(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        # next_tokens (1, K): the argmax of each logits row, unread (the rule takes its own)
        outputs = {mf.LOGITS: logits, mf.NEXT_TOKENS: np.empty(logits.shape[:2], np.int64),
                   **dict(zip(self.present_names, self.cache))}
        return outputs

    def _advance_counters(self, fed: int) -> None:
        if self.length + fed > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions is full")
        self.counters[0] = self.length + fed - 1
        self.counters[1] = self.length + fed

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Feed the prompt (1, S, D) f32 from an empty cache; the last position's logits (1, V)."""
        self.length = 0
        self._advance_counters(embeds.shape[1])
        logits = np.empty((1, 1, len(self.table)), np.float32)  # (1, 1, V)
        feed = self._feed(np.ascontiguousarray(embeds, dtype=np.float32), np.zeros((1, 0), np.int64),
                          np.array([-1], np.int64))
        self.prefill_runner.infer(feed, outputs=self._outputs(logits))
        self.length = embeds.shape[1]
        return logits[:, 0]

    def feed(self, token_ids: list[int], every_position: bool) -> np.ndarray:
        """Feed tokens after the cache's length; logits (S, V) of each fed position if
        ``every_position`` (needs ``logits_index``), else (1, V) of the last: a view of the bound
        output buffer, which the next call of the same shape overwrites."""
        key = (len(token_ids), every_position)
        if key not in self._calls:
            self._calls[key] = self._bind(*key)
        call, embeds, ids, logits, _ = self._calls[key]
        for i, token in enumerate(token_ids):
            ids[0, i] = token
        self._advance_counters(len(token_ids))
        call()
        self.length += len(token_ids)
        return logits[0]

    def _bind(self, fed: int, every_position: bool) -> tuple:
        # the S fed tokens as ids (1, S) the graph gathers; no embedding rows (1, 0, D)
        ids = np.zeros((1, fed), np.int64)
        embeds = np.empty((1, 0, self.table.shape[1]), np.float32)
        wanted = fed if every_position else 1
        index = np.arange(fed, dtype=np.int64) if every_position else np.array([-1], np.int64)
        logits = np.empty((1, wanted, len(self.table)), np.float32)  # (1, K, V)
        outputs = self._outputs(logits)
        # bound by address: every array stays referenced here for as long as the call may run
        return self.runner.bind(self._feed(embeds, ids, index), outputs), embeds, ids, logits, (index, outputs)


class SpeculativeDecoder:
    """:class:`Decoder`'s interface (``steps``, ``generate``, ``last_cache_bytes``) over an FP32
    ``target`` and a ``draft`` of the same model; at most ``draft_tokens`` proposed per FP32 call."""

    def __init__(self, target: Decoder, draft: Decoder, draft_tokens: int = DEFAULT_DRAFT_TOKENS) -> None:
        check_draft(target, draft)
        if draft_tokens < 1:
            raise SpeculativeError(f"draft_tokens must be >= 1, got {draft_tokens}")
        self.target, self.draft, self.draft_tokens = target, draft, draft_tokens
        self.manifest = target.manifest
        self.embed_table = target.embed_table
        self.runner = target.runner
        self.last_cache_bytes = 0
        self.last_stats = SpeculativeStats()

    def generate(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
        return stack_steps(self.steps(inputs_embeds, attention_mask, config))

    def steps(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig
              ) -> Iterator[Step]:
        """As :meth:`Decoder.steps`; batch-1 greedy runs speculatively, the rest the plain loop."""
        self.last_stats = SpeculativeStats()
        m = self.manifest
        prompt_length = inputs_embeds.shape[1]
        length = int(attention_mask.astype(np.int64).sum())  # batch 1: drop the left padding
        # batches, sampling, the grammar without expected locations: the plain loop; so too a prompt
        # over the context or without tokens, for the plain loop's own error
        if len(inputs_embeds) != 1 or config.do_sample or (config.slis_grammar and not config.expected_locations) \
                or prompt_length + config.max_new_tokens > m.max_context or length < 1:
            yield from self.target.steps(inputs_embeds, attention_mask, config)
            self.last_cache_bytes = self.target.last_cache_bytes
            return
        prompt = inputs_embeds[:, prompt_length - length:]  # (1, S, D)
        # One KV cache for both: the draft attends to the FP32 keys and values of everything kept
        # so far (no prefill of its own, no second cache, and a better-informed draft); it writes
        # its own only at the positions it proposes from, which the FP32 check then overwrites.
        capacity = length + config.max_new_tokens - 1  # never more than the plain loop's
        target = CacheStream(self.target, capacity)
        draft = CacheStream(self.draft, capacity, cache=target.cache)
        self.last_cache_bytes = target.nbytes
        eos, pad = m.special_tokens["eos"], m.special_tokens["pad"]
        rule = GreedyRule(1, len(self.embed_table), config, eos, pad)
        step = rule.choose(0, target.prefill(prompt))
        yield step
        produced = 1
        if rule.done or produced == config.max_new_tokens:
            return
        stats = self.last_stats
        # How many to propose: transformers' "heuristic" schedule for assisted generation, capped:
        # one more after a round the FP32 decoder took whole, one fewer after a rejection. A draft
        # that keeps missing then costs one draft step per FP32 call, not draft_tokens.
        count = self.draft_tokens
        while True:
            last = rule.chosen[0]  # chosen, not yet in the cache
            draft.length = target.length
            proposals = self._propose(draft, rule, last, produced, min(count, config.max_new_tokens - produced - 1))
            # (1 + k, V): the FP32 logits after `last` and after each proposal
            logits = target.feed([last, *proposals], every_position=True) if proposals else \
                target.feed([last], every_position=False)
            stats.rounds += 1
            stats.drafted += len(proposals)
            kept = 0
            for position in range(len(proposals) + 1):
                step = rule.choose(produced, logits[position:position + 1])
                produced += 1
                matched = position < len(proposals) and rule.chosen[0] == proposals[position]
                kept += matched
                yield step
                if rule.done or produced == config.max_new_tokens:
                    stats.accepted += kept
                    return
                if not matched:
                    break
            stats.accepted += kept
            # `last` and the kept proposals stand; the positions after them are overwritten next round
            target.length -= len(proposals) - kept
            taken = bool(proposals) and kept == len(proposals)
            count = min(count + 1, self.draft_tokens) if taken else max(count - 1, 1)

    def _propose(self, draft: CacheStream, rule: GreedyRule, last: int, produced: int, count: int) -> list[int]:
        """Up to ``count`` tokens from the draft, fed ``last`` first, chosen by the same rule
        (forked: the real rule only follows the FP32 choices); stops early at EOS."""
        proposals: list[int] = []
        own = rule.fork()
        token = last
        for i in range(count):
            own.choose(produced + i, draft.feed([token], every_position=False))
            token = own.chosen[0]
            proposals.append(token)
            if own.done:
                break
        return proposals


def check_draft(target: Decoder, draft: Decoder) -> None:
    """A draft serves a target when both are ORT CPU decoders of one architecture and tokenizer."""
    t, d = target.manifest, draft.manifest
    for name, manifest in (("the model", t), ("the draft", d)):
        if manifest.decoder_kind != mf.ORT_CPU_DECODER:
            raise SpeculativeError(
                f"{name}'s decoder is {manifest.decoder_kind!r}; speculative decoding runs ONNX Runtime's CPU "
                "decoder: export with eov-export onnx --decoder ort-cpu (and quantize that export for the draft)")
    if t.tokenizer.get("sha256") != d.tokenizer.get("sha256") or t.special_tokens != d.special_tokens:
        raise SpeculativeError("the draft has another tokenizer than the model; use a quantized export of the "
                               "same checkpoint (eov-export quantize) as the draft")
    if t.model_config.get("text_config") != d.model_config.get("text_config") or \
            target.embed_table.shape != draft.embed_table.shape:
        raise SpeculativeError("the draft's decoder has another architecture than the model's; use a quantized "
                               "export of the same checkpoint (eov-export quantize) as the draft")
