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
``present`` and the graph itself writes the new positions (``runtime/kv_stream.py``, shared with the
speculative decoder); :meth:`Decoder._steps_shared_cache`. Its
graph also gathers a fed token's embedding and takes each step's argmax: the greedy loop binds the
graph's ``next_tokens`` output and its ``input_ids`` input to one buffer, so between two decode
steps the host only reads the token ids (and rewrites one where EOS may not come yet or the SLIS
grammar forbids it) and advances two counters: no numpy pass over the logits, no embedding copy.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.errors import PromptError
from eov_edge.runtime.kv_stream import LAST_POSITION, FusedKVStream, PrefixKV
from eov_edge.runtime.runner import Runner
from eov_edge.runtime.token_choice import GenerationConfig, Step, stack_steps, token_rule

__all__ = ["Decoder", "GenerationConfig", "KVCache", "PrefixKV", "Step", "stack_steps"]



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
        self.last_prefix_kv: PrefixKV | None = None  # the shared prefix's keys and values, last generation
        # decode steps of single answers on llama.cpp (Pipeline.from_artifacts(decoder_backend="llamacpp")),
        # the prompt through ONNX Runtime ("onnxruntime", its keys and values handed over) or llama.cpp
        self.llama = None
        self.llama_prefill = "onnxruntime"  # or "llamacpp" (Pipeline.use_llamacpp decides)

    def steps(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
              shared_prefix: int = 0, prefix_kv: PrefixKV | None = None) -> Iterator[Step]:
        """Yield one :class:`Step` per generated token until every row has ended (EOS) or the limit.

        inputs_embeds (B, S, D) f32 with image embeddings already in place; attention_mask (B, S)
        i64, left padded. ``shared_prefix`` P: every row's first P real tokens are the same; they
        are prefilled once (or taken from ``prefix_kv``) and each row's rest on top of them.
        """
        m = self.manifest
        batch, prompt_length, _ = inputs_embeds.shape
        if prompt_length + config.max_new_tokens > m.max_context:
            raise PromptError(
                f"{prompt_length} prompt tokens + {config.max_new_tokens} new tokens exceed the context of "
                f"{m.max_context}; shorten the prompt or lower max_new_tokens"
            )
        self.last_prefix_kv = None
        if self.llama is not None and batch == 1 and not shared_prefix:
            yield from self._steps_llamacpp(inputs_embeds, attention_mask, config)
            return
        if m.decoder_kind == mf.ORT_CPU_DECODER:
            yield from self._steps_shared_cache(inputs_embeds, attention_mask, config, shared_prefix, prefix_kv)
            return
        attention_mask = attention_mask.astype(np.int64, copy=False)
        if shared_prefix:
            last_logits, presents, attention_mask = self._prefill_shared(inputs_embeds, attention_mask,
                                                                         shared_prefix, prefix_kv)
        positions = np.clip(attention_mask.cumsum(-1) - 1, 0, None)  # (B, T) left padding: count real tokens
        if not shared_prefix:
            empty = np.zeros((batch, m.num_kv_heads, 0, m.head_dim), np.float32)
            feed = {mf.INPUTS_EMBEDS: inputs_embeds, mf.ATTENTION_MASK: attention_mask, mf.POSITION_IDS: positions}
            feed.update((name, empty) for name in self.past_names)
            out = self.prefill_runner.infer(feed)
            last_logits, presents = out[mf.LOGITS][:, -1], [out[name] for name in self.present_names]
        capacity = attention_mask.shape[1] + config.max_new_tokens - 1
        cache = KVCache(m.num_layers, batch, m.num_kv_heads, m.head_dim, capacity)
        self.last_cache_bytes = cache.nbytes
        cache.write_prompt(presents, attention_mask)
        # Decode-step inputs live in buffers refilled in place, so the runner sees the same arrays
        # every step and keeps its binding (see OrtRunner).
        step_embeds = np.empty((batch, 1, self.embed_table.shape[1]), np.float32)  # (B, 1, D)
        step_position = positions[:, -1:] + 1  # (B, 1)
        feed = {mf.INPUTS_EMBEDS: step_embeds, mf.ATTENTION_MASK: cache.mask, mf.POSITION_IDS: step_position}
        feed.update(zip(self.past_names, cache.past))
        step_outputs = {mf.LOGITS: np.empty((batch, 1, len(self.embed_table)), np.float32)}  # (B, 1, V)
        step_outputs.update(zip(self.present_names, cache.present))
        decode_step = self.runner.bind_decode(feed, step_outputs, cache, dict(zip(self.present_names, self.past_names)))
        yield from self._tokens(last_logits, self._embedding_writer(step_embeds), decode_step,
                                lambda: np.add(step_position, 1, out=step_position), config)

    def _prefill_shared(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, shared_prefix: int,
                        prefix_kv: PrefixKV | None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Portable decoder: the shared prefix P once (batch 1, or ``prefix_kv``), then every row's
        suffix S_r on top of it, left padded to the longest suffix S' *after* the prefix: each row's
        cache is [prefix | padding | suffix], whose masked slots get zero attention weight and whose
        positions come from the mask. Returns last logits (B, V), presents 2L x (B, KV, P+S', hd)
        and the mask (B, P+S')."""
        m = self.manifest
        batch, prompt_length, dim = inputs_embeds.shape
        lengths = attention_mask.sum(-1)  # (B,)
        suffixes = lengths - shared_prefix  # (B,) S_r
        if not 0 < shared_prefix < int(lengths.min()):
            raise ValueError(f"shared prefix {shared_prefix} must leave every row a token of its own")
        if prefix_kv is None:
            first = prompt_length - int(lengths[0])  # row 0's first real token
            feed = {mf.INPUTS_EMBEDS: np.ascontiguousarray(inputs_embeds[0:1, first:first + shared_prefix]),
                    mf.ATTENTION_MASK: np.ones((1, shared_prefix), np.int64),
                    mf.POSITION_IDS: np.arange(shared_prefix, dtype=np.int64)[None]}
            feed.update((name, np.zeros((1, m.num_kv_heads, 0, m.head_dim), np.float32)) for name in self.past_names)
            out = self.prefill_runner.infer(feed)
            prefix_kv = PrefixKV([out[name][0] for name in self.present_names])
        elif prefix_kv.length != shared_prefix:
            raise ValueError(f"cached prefix of {prefix_kv.length} positions for a prefix of {shared_prefix}")
        self.last_prefix_kv = prefix_kv
        width = int(suffixes.max())  # S'
        suffix_embeds = np.zeros((batch, width, dim), np.float32)  # (B, S', D), left padded
        mask = np.zeros((batch, shared_prefix + width), np.int64)  # (B, P+S')
        mask[:, :shared_prefix] = 1
        for row, s in enumerate(suffixes.tolist()):
            suffix_embeds[row, width - s:] = inputs_embeds[row, prompt_length - s:]
            mask[row, shared_prefix + width - s:] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)[:, shared_prefix:]  # (B, S')
        past = [np.ascontiguousarray(np.broadcast_to(a[None], (batch, *a.shape))) for a in prefix_kv.arrays]
        feed = {mf.INPUTS_EMBEDS: suffix_embeds, mf.ATTENTION_MASK: mask, mf.POSITION_IDS: positions,
                **dict(zip(self.past_names, past))}
        out = self.prefill_runner.infer(feed)
        presents = [np.concatenate([p, out[name]], axis=2) for p, name in zip(past, self.present_names)]
        return out[mf.LOGITS][:, -1], presents, mask

    def _steps_shared_cache(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
                            shared_prefix: int = 0, prefix_kv: PrefixKV | None = None) -> Iterator[Step]:
        """The loop over the ONNX Runtime CPU decoder (``decoder_kind`` "ort-cpu") through a
        :class:`FusedKVStream`: prompts prefilled unpadded, then the batch decodes together, each row
        at its own length. Decode steps feed the previous step's ``next_tokens`` buffer as
        ``input_ids`` (one buffer bound as both)."""
        batch = inputs_embeds.shape[0]
        lengths = attention_mask.astype(np.int64).sum(-1)  # (B,) real prompt tokens (left padded)
        if (lengths < 1).any():
            raise PromptError("a prompt row has no tokens (its attention mask is all zero)")
        stream = FusedKVStream(self, batch, int(lengths.max()) + config.max_new_tokens - 1)
        self.last_cache_bytes = stream.nbytes
        logits = np.empty((batch, 1, len(self.embed_table)), np.float32)  # (B, 1, V)
        # (B, 1) i64: the graph's argmax of each row (next_tokens), then that step's input_ids
        tokens = np.zeros((batch, 1), np.int64)
        self.last_prefix_kv = stream.prefill(inputs_embeds, lengths, logits, tokens, shared_prefix, prefix_kv)
        stream.prepare_one()  # the counters of the first decode step
        # input_ids and next_tokens: one buffer. The graph reads it first (the table Gather feeds
        # every layer) and writes it last (the ArgMax of the logits), so a step's chosen tokens are
        # the next step's input as they stand; the host rewrites a row only where the token rule
        # overrides the argmax.
        token_view = memoryview(tokens.reshape(-1))  # (B,) plain Python reads and writes, no numpy call
        bound: list = []  # the bound call, made on the first decode step: the first token is out before

        def decode_step() -> dict[str, np.ndarray]:
            if not bound:
                bound.append(stream.bind(tokens, logits, LAST_POSITION, next_tokens=tokens))
            return bound[0]()

        yield from self._tokens(logits[:, -1], _token_writer(token_view), decode_step, stream.prepare_one, config,
                                token_view)

    def _steps_llamacpp(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray,
                        config: GenerationConfig) -> Iterator[Step]:
        """One answer (batch 1) whose decode steps run on llama.cpp (:mod:`eov_edge.runtime.llamacpp_decoder`):
        the prompt through ONNX Runtime's CPU decoder, its keys and values handed to llama.cpp's
        cache and the first token chosen from its logits, or the prompt through llama.cpp."""
        length = int(attention_mask.astype(np.int64).sum())
        if length < 1:
            raise PromptError("the prompt has no tokens (its attention mask is all zero)")
        embeds = inputs_embeds[0, inputs_embeds.shape[1] - length:]  # (P, D): left padding dropped
        llama = self.llama
        if self.llama_prefill == "onnxruntime":
            stream = FusedKVStream(self, 1, length)  # the prompt's positions only: decode steps run on llama.cpp
            logits = np.empty((1, 1, len(self.embed_table)), np.float32)  # (1, 1, V)
            next_tokens = np.zeros((1, 1), np.int64)  # the graph's argmax
            stream.prefill(embeds[None], np.array([length]), logits, next_tokens)
            # past order: key, value per layer; (1, KV, P, hd) -> (KV, P, hd)
            llama.load_prompt([c[0] for c in stream.cache[0::2]], [c[0] for c in stream.cache[1::2]])
            first = logits[:, -1]  # (1, V)
            llama.argmax = int(next_tokens[0, 0])
        else:
            first = llama.prefill(embeds)  # (1, V), llama.cpp's buffer
        self.last_cache_bytes = 0  # llama.cpp's context holds the cache, allocated once
        overridden: list[int] = []  # the token rule's choice where it is not llama.cpp's argmax
        outputs: dict[str, np.ndarray] = {}

        def write(chosen: list[int]) -> None:
            overridden.append(chosen[0])

        def decode_step() -> dict[str, np.ndarray]:
            token = overridden.pop() if overridden else llama.argmax
            outputs[mf.LOGITS] = llama.step(token)[:, None]  # (1, 1, V), llama.cpp's buffer
            return outputs

        yield from self._tokens(first, write, decode_step, lambda: None, config, _LlamaArgmax(llama),
                                logits_rebound=True)

    def _embedding_writer(self, step_embeds: np.ndarray):
        """A call that writes the chosen tokens' embedding rows into ``step_embeds`` (B, 1, D)."""
        table = self.embed_table

        def write(chosen: list[int]) -> None:
            for row, token in enumerate(chosen):
                step_embeds[row, 0] = table[token]  # float16 tables are widened here

        return write

    def _tokens(self, logits: np.ndarray, write_tokens, decode_step, advance, config: GenerationConfig,
                graph_tokens=None, logits_rebound: bool = False) -> Iterator[Step]:
        """The token loop both decoders share: choose from ``logits`` (B, V), yield, give the chosen
        tokens (a list) to ``write_tokens`` for the next call, run ``decode_step`` (which returns
        the outputs with the new logits), ``advance`` the position inputs in place.
        ``graph_tokens``: (B,) the graph's argmax of ``logits``, already bound as the next call's
        input (``next_tokens`` = ``input_ids``): chosen tokens are written only where they differ,
        and ``logits`` is the bound output buffer, rewritten by every call (``logits_rebound``: each
        call's outputs say where it is, as llama.cpp's buffer)."""
        # Each step's host work runs right after the graph has streamed every weight through the
        # caches, so every numpy call pays cold caches (~10-40 us each measured in this loop, against
        # 1-10 us warm): the greedy rule keeps per-row state in Python lists, and with graph_tokens
        # a step the argmax decides makes no numpy call at all.
        m = self.manifest
        rule = token_rule(len(logits), logits.shape[-1], config, m.special_tokens["eos"], m.special_tokens["pad"])
        for index in range(config.max_new_tokens):
            argmax = None if graph_tokens is None else graph_tokens.tolist()
            yield rule.choose(index, logits, argmax)
            if rule.done or index == config.max_new_tokens - 1:
                return
            if rule.chosen != argmax:  # always without graph_tokens; sampling: where the draw differs
                write_tokens(rule.chosen)
            outputs = decode_step()
            if graph_tokens is None or logits_rebound:
                logits = outputs[mf.LOGITS][:, -1]
            advance()

    def generate(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, config: GenerationConfig,
                 shared_prefix: int = 0, prefix_kv: PrefixKV | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (B, T) and their probabilities (B, T), T <= max_new_tokens; rows that ended
        early are padded like ``generate()`` pads them."""
        return stack_steps(self.steps(inputs_embeds, attention_mask, config, shared_prefix, prefix_kv))


class _LlamaArgmax:
    """The (B,) = (1,) argmax the token rule reads, as the fused ORT graph's ``next_tokens``: taken
    by llama.cpp's greedy sampler after each step (:class:`LlamaCppDecodeSession`)."""

    def __init__(self, session) -> None:
        self.session = session

    def tolist(self) -> list[int]:
        return [self.session.argmax]


def _token_writer(view: memoryview):
    """A call that writes the chosen tokens (a list) into the (B,) token buffer ``view``."""

    def write(chosen: list[int]) -> None:
        for row, token in enumerate(chosen):
            view[row] = token

    return write
