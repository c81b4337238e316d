"""Autoregressive decoding over the exported decoder graph with a preallocated KV cache (numpy only).

The decoder graph's contract (``ExportDecoder``): ``past`` (B, KV, P, hd) in, ``present``
(B, KV, S, hd) out: the keys and values of the S positions just fed, nothing else. The runtime
owns the cache: one buffer per layer and kind, of fixed capacity C = prompt + max_new_tokens - 1
slots, allocated once per generation. Every decode step feeds the *whole* buffer with the
not-yet-written slots masked out, so every step has the same shapes, the one-slot present outputs
land in buffers bound once (IOBinding), and the runtime copies that slot into the cache: nothing
else of the cache moves. Masked slots get exactly zero attention weight, and positions come from
the mask, not the slot index, so the tokens are those of PyTorch ``generate()`` (tested on calib_data).

Artifacts exported with ``--decoder ort-cpu`` (``manifest.decoder_kind``) carry ONNX Runtime's fused
decoder instead (``export/ort_decoder.py``): there the KV buffer is shared between ``past`` and
``present`` and the graph itself writes the new positions; :meth:`Decoder._steps_shared_cache`. Its
graph also gathers a fed token's embedding and takes each step's argmax: the greedy loop binds the
graph's ``next_tokens`` output and its ``input_ids`` input to one buffer, so between two decode
steps the host only reads the token ids (and rewrites one where EOS may not come yet or the SLIS
grammar forbids it) and advances two counters: no numpy pass over the logits, no embedding copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.errors import PromptError
from eov_edge.core.slis_grammar import CLOSE_IDS, LOC_END, LOC_FIRST, SlisGrammar
from eov_edge.runtime.runner import Runner


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick tokens: greedy by default; ``do_sample`` draws with a seeded generator."""

    max_new_tokens: int = 64
    # EOS cannot be chosen before this many tokens (transformers' ``min_new_tokens``: its logit is
    # set to -inf), so benchmarks time a fixed number of steps and stay comparable token for token.
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int = 0
    # Mask tokens that would break a spatial answer's SLIS grammar (eov_edge.core.slis_grammar), as
    # PyTorch generate() does by default; reported probabilities are then those of the constrained
    # distribution. Off only to compare with a decoder loop that has no such rule (ORT GenAI).
    slis_grammar: bool = True
    # With the grammar: a location token is the mean bin of the model's distribution, not its
    # argmax (eov_edge.core.slis_grammar), as PyTorch generate() does by default.
    expected_locations: bool = True
    # Each chosen token's probability (``Step.probs``; the runtime's detection scores). Off, the
    # greedy loop skips the softmax denominator (an exp over the vocabulary per step) and ``probs``
    # is NaN: what a loop that reports no scores does (transformers' output_scores=False, ORT GenAI).
    output_scores: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")


@dataclass
class Step:
    """One decoding step of a batch: the chosen ids (B,) and their probabilities (B,)."""

    index: int
    token_ids: np.ndarray
    probs: np.ndarray  # NaN where GenerationConfig.output_scores is off
    finished: np.ndarray  # (B,) bool, after this step


class KVCache:
    """Per-layer key/value buffers allocated once per generation, plus the step mask.

    past: 2L arrays (B, KV, C, hd); present: 2L arrays (B, KV, 1, hd), the fed token's key/value that
    the decoder writes each step; mask: (B, C+1) i64 over [cache slots..., the new token].
    """

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0  # slots written
        self.past = [np.zeros((batch, kv_heads, capacity, head_dim), np.float32) for _ in range(2 * num_layers)]
        self.present = [np.empty((batch, kv_heads, 1, head_dim), np.float32)
                        for _ in range(2 * num_layers)]
        self.mask = np.zeros((batch, capacity + 1), np.int64)
        self.mask[:, capacity] = 1  # the token being fed always attends to itself

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.past) + sum(a.nbytes for a in self.present) + self.mask.nbytes

    def write_prompt(self, presents: list[np.ndarray], prompt_mask: np.ndarray) -> None:
        """Store the prefill's present tensors (B, KV, S, hd) in slots 0..S-1."""
        length = prompt_mask.shape[1]
        if length > self.capacity:
            raise ValueError(f"prompt of {length} tokens exceeds the cache capacity {self.capacity}")
        for buffer, present in zip(self.past, presents):
            buffer[:, :, :length] = present
        self.mask[:, :length] = prompt_mask
        self.length = length

    def append_step(self, copy: bool = True) -> None:
        """Move the fed token's key/value (``present``) into the next cache slot and unmask it.
        ``copy=False``: a runner that keeps the cache on its device appended the slot there."""
        if self.length >= self.capacity:
            raise ValueError("KV cache full")
        if copy:
            for buffer, present in zip(self.past, self.present):
                buffer[:, :, self.length] = present[:, :, 0]
        self.mask[:, self.length] = 1
        self.length += 1


def chosen_token_probs(logits: np.ndarray, ids: np.ndarray, out: np.ndarray | None = None,
                       excluded: int | np.ndarray | None = None) -> np.ndarray:
    """Each row's probability of its chosen token under the model (temperature 1), (B,) float64:
    1 / sum(exp(l - l_chosen)) over logits (B, V); float32 exponentials, float64 sum (no (B, V)
    float64 copy; plain indexing, not take_along_axis, which costs ~30 us a step building its
    indices). ``out``: a (B, V) float32 scratch written instead of allocating; ``excluded``: token
    ids (one, or an array) left out of the sum (EOS before min_new_tokens, what the SLIS grammar
    forbids) without copying ``logits`` to mask them."""
    shifted = np.subtract(logits, logits[np.arange(len(ids)), ids][:, None], out=out)  # (B, V)
    if excluded is not None:
        shifted[:, excluded] = -np.inf
    return 1.0 / np.exp(shifted, out=shifted).sum(-1, dtype=np.float64)


def softmax_last(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (probabilities reported as scores)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class GreedyRule:
    """How a greedy loop picks each step's tokens (B rows) from logits (B, V): the argmax, EOS
    masked before ``min_new_tokens``, the SLIS grammar (with expected locations), finished rows
    padded; each pick's probability unless ``scores`` is off. One object per generation: it holds
    the rows' state (finished, grammar). The plain loop and the speculative check
    (:mod:`eov_edge.runtime.speculative`) both choose through it, so they choose alike."""

    def __init__(self, batch: int, vocab: int, config: GenerationConfig, eos: int, pad: int,
                 scores: bool | None = None) -> None:
        self.min_new_tokens = config.min_new_tokens
        self.eos, self.pad = eos, pad
        self.scores = config.output_scores if scores is None else scores
        self.finished = [False] * batch
        self.scratch = np.empty((batch, vocab), np.float32)  # (B, V), reused every step
        self.grammar = SlisGrammar(batch) if config.slis_grammar else None
        self.chosen: list[int] = []  # the last step's tokens
        self.no_scores = np.full(batch, np.nan)  # every step's probs without scores (read-only, shared)
        self.no_scores.flags.writeable = False

    @property
    def done(self) -> bool:
        return False not in self.finished

    def choose(self, index: int, logits: np.ndarray, argmax: list[int] | None = None) -> Step:
        """Step ``index``'s tokens from ``logits`` (B, V) (read, never written); advances the state.
        ``argmax``: each row's argmax of ``logits`` where the graph took it (``next_tokens``); the
        logits are then read only where a rule overrides it or ``scores`` asks for probabilities."""
        masked = index < self.min_new_tokens  # EOS may not be chosen yet
        if self.grammar is None:
            chosen, probs = _greedy_choice(logits, masked, self.eos, self.scratch, self.scores, argmax)
        else:
            chosen, probs = _greedy_grammar_choice(logits, masked, self.eos, self.finished, self.grammar,
                                                   self.scratch, self.scores, argmax)
        if True in self.finished:
            chosen = [self.pad if done else token for token, done in zip(chosen, self.finished)]
        if self.grammar is not None:
            self.grammar.advance(chosen)
        self.finished = [done or token == self.eos for token, done in zip(chosen, self.finished)]
        self.chosen = chosen
        return Step(index, np.array(chosen, np.int64), self.no_scores if probs is None else probs,
                    np.array(self.finished))

    def fork(self) -> "GreedyRule":
        """A copy that goes its own way from here (a draft's proposals) and scores nothing. The
        scratch buffer is shared: the two choose in turn, and no pick reads it after returning."""
        other = copy.copy(self)
        other.finished = list(self.finished)
        other.grammar = copy.deepcopy(self.grammar)
        other.scores = False
        return other


class Decoder:
    """Prefill + decode loop over a decoder runner and the token embedding table."""

    def __init__(self, runner: Runner, embed_table: np.ndarray, manifest: mf.Manifest,
                 prefill_runner: Runner | None = None) -> None:
        self.runner = runner
        # prompts go through prefill_runner where given (a session of the same graph with other
        # kernels: mf.PREFILL_SESSION_CONFIG), decode steps through runner
        self.prefill_runner = prefill_runner or runner
        self.embed_table = embed_table  # (V, D) float32 or float16
        self.manifest = manifest
        self.past_names = mf.past_names(manifest.num_layers)
        self.present_names = mf.present_names(manifest.num_layers)
        self.last_cache_bytes = 0
        # the ORT CPU decoder's logits_index input, where the graph has one (earlier exports built [-1] in)
        self._last_logits = ({mf.LOGITS_INDEX: np.array([-1], np.int64)}
                             if mf.LOGITS_INDEX in runner.input_names else {})
        # the ORT CPU decoder gathers fed tokens' embeddings and takes the argmax itself (earlier
        # exports take embeddings only)
        self.tokens_in_graph = mf.INPUT_IDS in runner.input_names

    def steps(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig
              ) -> Iterator[Step]:
        """Yield one :class:`Step` per generated token until every row has ended (EOS) or the limit.

        inputs_embeds (B, S, D) f32 with image embeddings already in place; attention_mask (B, S)
        i64, left padded.
        """
        m = self.manifest
        batch, prompt_length, _ = inputs_embeds.shape
        if prompt_length + config.max_new_tokens > m.max_context:
            raise PromptError(
                f"{prompt_length} prompt tokens + {config.max_new_tokens} new tokens exceed the context of "
                f"{m.max_context}; shorten the prompt or lower max_new_tokens"
            )
        if m.decoder_kind == mf.ORT_CPU_DECODER:
            yield from self._steps_shared_cache(inputs_embeds, attention_mask, config)
            return
        attention_mask = attention_mask.astype(np.int64, copy=False)
        positions = np.clip(attention_mask.cumsum(-1) - 1, 0, None)  # left padding: count real tokens
        empty = np.zeros((batch, m.num_kv_heads, 0, m.head_dim), np.float32)
        feed = {mf.INPUTS_EMBEDS: inputs_embeds, mf.ATTENTION_MASK: attention_mask, mf.POSITION_IDS: positions}
        feed.update((name, empty) for name in self.past_names)
        out = self.prefill_runner.infer(feed)
        capacity = prompt_length + config.max_new_tokens - 1
        cache = KVCache(m.num_layers, batch, m.num_kv_heads, m.head_dim, capacity)
        self.last_cache_bytes = cache.nbytes
        cache.write_prompt([out[name] for name in self.present_names], attention_mask)
        # Decode-step inputs live in buffers refilled in place, so the runner sees the same arrays
        # every step and keeps its binding (see OrtRunner).
        step_embeds = np.empty((batch, 1, self.embed_table.shape[1]), np.float32)  # (B, 1, D)
        step_position = positions[:, -1:] + 1  # (B, 1)
        feed = {mf.INPUTS_EMBEDS: step_embeds, mf.ATTENTION_MASK: cache.mask, mf.POSITION_IDS: step_position}
        feed.update(zip(self.past_names, cache.past))
        step_outputs = {mf.LOGITS: np.empty((batch, 1, len(self.embed_table)), np.float32)}  # (B, 1, V)
        step_outputs.update(zip(self.present_names, cache.present))
        decode_step = self.runner.bind_decode(feed, step_outputs, cache, dict(zip(self.present_names, self.past_names)))
        yield from self._tokens(out[mf.LOGITS][:, -1], self._embedding_writer(step_embeds), decode_step,
                                lambda: np.add(step_position, 1, out=step_position), config)

    def _steps_shared_cache(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig
                            ) -> Iterator[Step]:
        """The loop over the ONNX Runtime CPU decoder (``decoder_kind`` "ort-cpu"): one KV buffer per
        layer and kind, bound as both ``past`` and ``present``; the graph writes each row's new K/V
        at that row's length. Prompts are prefilled unpadded (the buffers hold rows from slot 0),
        consecutive rows of equal length together, then the batch decodes together, each row at its
        own length. Where the graph takes token ids (:attr:`tokens_in_graph`), decode steps feed
        the previous step's ``next_tokens`` buffer as ``input_ids`` (one buffer bound as both)."""
        m = self.manifest
        batch, prompt_length, _ = inputs_embeds.shape
        lengths = attention_mask.astype(np.int64).sum(-1)  # (B,) real prompt tokens (left padded)
        if (lengths < 1).any():
            raise PromptError("a prompt row has no tokens (its attention mask is all zero)")
        capacity = int(lengths.max()) + config.max_new_tokens - 1
        cache = [np.zeros((batch, m.num_kv_heads, capacity, m.head_dim), np.float32) for _ in self.past_names]
        self.last_cache_bytes = sum(c.nbytes for c in cache)
        vocab, hidden = self.embed_table.shape
        logits = np.empty((batch, 1, vocab), np.float32)  # (B, 1, V)
        # (B, 1) i64: the graph's argmax of each row (next_tokens), then that step's input_ids
        tokens = np.zeros((batch, 1), np.int64)
        with_ids = self.tokens_in_graph
        no_ids = np.zeros((batch, 0), np.int64)  # (B, 0): prompts come as embeddings only
        start = 0
        while start < batch:  # consecutive rows of one prompt length prefill together (no padding)
            length = int(lengths[start])
            end = start + 1
            while end < batch and lengths[end] == length:
                end += 1
            feed = {mf.INPUTS_EMBEDS: np.ascontiguousarray(inputs_embeds[start:end, prompt_length - length:],
                                                           dtype=np.float32),
                    mf.SEQLENS_K: np.full(end - start, length - 1, np.int32),
                    mf.TOTAL_SEQUENCE_LENGTH: np.array(length, np.int32)}
            feed.update(self._last_logits)
            if with_ids:
                feed.update({mf.INPUT_IDS: no_ids[start:end], mf.EMBED_TABLE: self.embed_table})
            rows = [c[start:end] for c in cache]  # (rows, KV, C, hd) views into the shared buffers
            feed.update(zip(self.past_names, rows))
            outputs = {mf.LOGITS: logits[start:end], **dict(zip(self.present_names, rows))}
            if with_ids:
                outputs[mf.NEXT_TOKENS] = tokens[start:end]
            self.prefill_runner.infer(feed, outputs=outputs)
            start = end
        # Decode: the same buffers every step, refilled in place (one binding for the whole loop).
        # GQA's seqlens_k (B,) (tokens already cached per row, for the next one) and
        # total_sequence_length (), views of one buffer advanced together
        counters = np.append(lengths, lengths.max() + 1).astype(np.int32)  # (B + 1,)
        seqlens, total = counters[:batch], counters[batch:].reshape(())
        feed = {mf.SEQLENS_K: seqlens, mf.TOTAL_SEQUENCE_LENGTH: total, **self._last_logits}
        outputs = {mf.LOGITS: logits, **dict(zip(self.present_names, cache))}
        if with_ids:
            # input_ids and next_tokens: one buffer. The graph reads it first (the table Gather feeds
            # every layer) and writes it last (the ArgMax of the logits), so a step's chosen tokens
            # are the next step's input as they stand; the host rewrites a row only where a rule
            # overrides the argmax (GreedyRule, or the general loop's choice).
            feed.update({mf.INPUTS_EMBEDS: np.zeros((batch, 0, hidden), np.float32), mf.INPUT_IDS: tokens,
                         mf.EMBED_TABLE: self.embed_table})
            outputs[mf.NEXT_TOKENS] = tokens
            token_view = memoryview(tokens.reshape(-1))  # (B,) plain Python reads and writes, no numpy call
            write = _token_writer(token_view)
        else:
            step_embeds = np.empty((batch, 1, hidden), np.float32)  # (B, 1, D)
            feed[mf.INPUTS_EMBEDS] = step_embeds
            token_view, write = None, self._embedding_writer(step_embeds)
        feed.update(zip(self.past_names, cache))
        bound: list = []  # the bound call, made on the first decode step: the first token is out before

        def decode_step() -> dict[str, np.ndarray]:
            if not bound:
                bound.append(self.runner.bind(feed, outputs))  # checked and bound once: the loop only refills
            return bound[0]()

        counter_view = memoryview(counters)  # (B + 1,) i32

        def advance() -> None:
            for i in range(len(counter_view)):  # a few Python increments: cheaper than a numpy call here
                counter_view[i] += 1

        yield from self._tokens(logits[:, -1], write, decode_step, advance, config, token_view)

    def _embedding_writer(self, step_embeds: np.ndarray):
        """A call that writes the chosen tokens' embedding rows into ``step_embeds`` (B, 1, D)."""
        table = self.embed_table

        def write(chosen: list[int]) -> None:
            for row, token in enumerate(chosen):
                step_embeds[row, 0] = table[token]  # float16 tables are widened here

        return write

    def _tokens(self, logits: np.ndarray, write_tokens, decode_step, advance, config: GenerationConfig,
                graph_tokens: memoryview | None = None) -> Iterator[Step]:
        """The token loop both decoders share: choose from ``logits`` (B, V), yield, give the chosen
        tokens (a list) to ``write_tokens`` for the next call, run ``decode_step`` (which returns
        the outputs with the new logits), ``advance`` the position inputs in place.
        ``graph_tokens``: (B,) the graph's argmax of ``logits``, already bound as the next call's
        input (``next_tokens`` = ``input_ids``): chosen tokens are written only where they differ,
        and ``logits`` is the bound output buffer, rewritten by every call."""
        if config.do_sample or (config.slis_grammar and not config.expected_locations):
            yield from self._tokens_general(logits, write_tokens, decode_step, advance, config, graph_tokens)
            return
        # Greedy (with or without the grammar): the hot path. Each step's host work runs right after
        # the graph has streamed every weight through the caches, so every numpy call pays cold
        # caches (~10-40 us each measured in this loop, against 1-10 us warm): per-row bookkeeping in
        # Python lists, numpy only on (B, V) rows and (B, D), nothing allocated at (B, V); with
        # graph_tokens no numpy call at all on a step the argmax decides. Tokens and probabilities
        # are bit-identical to the loop through _choose (tested).
        m = self.manifest
        rule = GreedyRule(len(logits), logits.shape[-1], config, m.special_tokens["eos"], m.special_tokens["pad"])
        for index in range(config.max_new_tokens):
            argmax = None if graph_tokens is None else graph_tokens.tolist()
            yield rule.choose(index, logits, argmax)
            if rule.done or index == config.max_new_tokens - 1:
                return
            if rule.chosen != argmax:  # always without graph_tokens
                write_tokens(rule.chosen)
            outputs = decode_step()
            if graph_tokens is None:
                logits = outputs[mf.LOGITS][:, -1]
            advance()

    def _tokens_general(self, logits: np.ndarray, write_tokens, decode_step, advance, config: GenerationConfig,
                        graph_tokens: memoryview | None = None) -> Iterator[Step]:
        """:meth:`_tokens` with the grammar or sampling: every step through :meth:`_choose`."""
        rng = np.random.default_rng(config.seed)
        finished = np.zeros(len(logits), bool)
        grammar = SlisGrammar(len(logits), config.expected_locations) if config.slis_grammar else None
        for index in range(config.max_new_tokens):
            step = self._choose(index, logits, finished, config, rng, grammar)
            if not config.output_scores:
                step.probs[:] = np.nan
            yield step
            if step.finished.all() or index == config.max_new_tokens - 1:
                return
            write_tokens(step.token_ids.tolist())
            outputs = decode_step()
            if graph_tokens is None:
                logits = outputs[mf.LOGITS][:, -1]
            advance()

    def _choose(self, index: int, logits: np.ndarray, finished: np.ndarray, config: GenerationConfig,
                rng: np.random.Generator, grammar: SlisGrammar | None = None) -> Step:
        """Pick step ``index``'s tokens from logits (B, V); rows already finished get pad. Updates
        ``finished`` and ``grammar`` in place."""
        eos, pad = self.manifest.special_tokens["eos"], self.manifest.special_tokens["pad"]
        if index < config.min_new_tokens or grammar is not None:
            logits = logits.copy()  # the runner's output buffer stays as the model wrote it
        if index < config.min_new_tokens:
            logits[:, eos] = -np.inf
        if grammar is not None:
            grammar.constrain(logits, np.flatnonzero(~finished).tolist())
        ids, probs = self._pick(logits, config, rng)
        if grammar is not None and grammar.location_mass:
            # a location chosen as the distribution's mean: report the model's mass around it
            rows = list(grammar.location_mass)
            probs[rows] = [grammar.location_mass[r] for r in rows]
        ids = np.where(finished, pad, ids)
        if grammar is not None:
            grammar.advance(ids.tolist())
        finished |= ids == eos
        return Step(index, ids, probs, finished.copy())

    @staticmethod
    def _pick(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
        if not config.do_sample:
            ids = logits.argmax(-1)  # (B,) int64
            return ids, chosen_token_probs(logits, ids)
        rows = np.arange(len(logits))
        probs = softmax_last(logits)  # (B, V), the model's own distribution (temperature 1)
        if config.do_sample:
            scaled = logits.astype(np.float64) / config.temperature
            if config.top_k:
                kth = np.sort(scaled, axis=-1)[:, -min(config.top_k, scaled.shape[-1])][:, None]
                scaled = np.where(scaled < kth, -np.inf, scaled)
            sampling = softmax_last(scaled)
            ids = np.array([rng.choice(len(row), p=row) for row in sampling])
        return ids.astype(np.int64), probs[rows, ids]

    def generate(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (B, T) and their probabilities (B, T), T <= max_new_tokens; rows that ended
        early are padded like ``generate()`` pads them."""
        return stack_steps(self.steps(inputs_embeds, attention_mask, config))


def _token_writer(view: memoryview):
    """A call that writes the chosen tokens (a list) into the (B,) token buffer ``view``."""

    def write(chosen: list[int]) -> None:
        for row, token in enumerate(chosen):
            view[row] = token

    return write


def stack_steps(steps: Iterator[Step]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (B, T) and probabilities (B, T) of a decoder's steps."""
    steps = list(steps)
    return np.stack([s.token_ids for s in steps], 1), np.stack([s.probs for s in steps], 1)


def _greedy_choice(logits: np.ndarray, masked: bool, eos: int, scratch: np.ndarray, scores: bool,
                   argmax: list[int] | None = None) -> tuple[list[int], np.ndarray | None]:
    """Greedy ids (a list of B) and their probabilities (B,) (None without ``scores``) from logits
    (B, V), EOS excluded when ``masked``; the runner's buffer is read, never written (``scratch``
    is). ``argmax``: the rows' argmax, already taken (the graph's ``next_tokens``)."""
    chosen = logits.argmax(-1).tolist() if argmax is None else argmax
    source = logits
    if masked and eos in chosen:
        np.copyto(scratch, logits)
        scratch[:, eos] = -np.inf
        chosen = scratch.argmax(-1).tolist()
        source = scratch
    if not scores:
        return chosen, None
    return chosen, chosen_token_probs(source, np.array(chosen, np.int64), out=scratch,
                                      excluded=eos if masked else None)


_CLOSE_TOKEN_SET = frozenset(CLOSE_IDS.values())
# what the grammar forbids outside any shape: every location token and every closing tag
_ILLEGAL_OUTSIDE = np.r_[LOC_FIRST:LOC_END, sorted(_CLOSE_TOKEN_SET)].astype(np.int64)


def _greedy_grammar_choice(logits: np.ndarray, masked: bool, eos: int, finished: list[bool],
                           grammar: SlisGrammar, scratch: np.ndarray, scores: bool,
                           argmax: list[int] | None = None) -> tuple[list[int], np.ndarray | None]:
    """:func:`_greedy_choice` under the SLIS grammar, without copying the logits of a row whose
    argmax the grammar allows (most steps: text outside any shape). Its probability is then the
    one over the legal tokens (the illegal ones, and EOS when ``masked``, excluded from the sum), as
    the loop through ``_choose`` computes it on its masked copy. A row inside a shape, or whose
    argmax is illegal, takes that loop's route row by row (copy, ``SlisGrammar.constrain``, argmax;
    a location's probability is the grammar's ``location_mass``). Rows already finished are not
    constrained (as there). ``argmax``: as for :func:`_greedy_choice` (not modified)."""
    chosen = logits.argmax(-1).tolist() if argmax is None else list(argmax)
    probs = np.full(len(chosen), np.nan) if scores else None
    illegal = (np.append(_ILLEGAL_OUTSIDE, eos) if masked else _ILLEGAL_OUTSIDE) if scores else None
    for row, token in enumerate(chosen):
        rows = slice(row, row + 1)
        if finished[row]:  # padding from here on; its probability as the general loop reports it
            if scores:
                probs[row] = chosen_token_probs(logits[rows], np.array([token]), out=scratch[rows])[0]
            continue
        if grammar.open_kind[row] is None and not (LOC_FIRST <= token < LOC_END or token in _CLOSE_TOKEN_SET
                                                   or (masked and token == eos)):
            if scores:  # the legal argmax: no copy of the row
                probs[row] = chosen_token_probs(logits[rows], np.array([token]), out=scratch[rows],
                                                excluded=illegal)[0]
            continue
        line = scratch[row]  # (V,) a view
        np.copyto(line, logits[row])
        if masked:
            line[eos] = -np.inf
        grammar.constrain(scratch, [row])
        token = chosen[row] = int(line.argmax())
        if not scores:
            continue
        if row in grammar.location_mass:
            probs[row] = grammar.location_mass[row]
        else:
            probs[row] = chosen_token_probs(scratch[rows], np.array([token]), out=scratch[rows])[0]
    return chosen, probs
