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
from eov_edge.runtime.kv_stream import FusedKVStream
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
        target = FusedKVStream(self.target, 1, capacity)
        draft = FusedKVStream(self.draft, 1, capacity, cache=target.cache)
        self.last_cache_bytes = target.nbytes
        eos, pad = m.special_tokens["eos"], m.special_tokens["pad"]
        rule = GreedyRule(1, len(self.embed_table), config, eos, pad)
        first = np.empty((1, 1, len(self.embed_table)), np.float32)  # (1, 1, V)
        target.prefill(prompt, np.array([length]), first, np.empty((1, 1), np.int64))
        step = rule.choose(0, first[:, 0])
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

    def _propose(self, draft: FusedKVStream, rule: GreedyRule, last: int, produced: int, count: int) -> list[int]:
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
