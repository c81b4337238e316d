"""llama.cpp's own decode loop, as the head to head's worker runs it (:mod:`eov_edge.bench.llamacpp`):
the model, context and prompt feeding of the runtime's :class:`LlamaCppDecodeSession` (the same
settings on both sides), then per step one ``llama_decode`` of one token and llama.cpp's sampler
chain in C (EOS biased away, greedy), what ``llama-cli`` does; no token rule of ours."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from eov_edge.runtime.llamacpp_decoder import LlamaCppDecodeSession


class LlamaCppDecoder:
    """Greedy tokens after a prompt of embeddings, EOS suppressed (every answer exactly ``max_new``
    tokens, as the runtime's ``min_new_tokens``), in a context of ``context`` positions."""

    def __init__(self, gguf_path: Path | None, max_new: int, threads: int, eos_token_id: int, exact_f32: bool,
                 context: int, session: LlamaCppDecodeSession | None = None):
        # ``session``: an open one (the runtime's own, for a loop-against-loop comparison), kept open by close()
        self.owns_session = session is None
        self.session = session = session or LlamaCppDecodeSession(gguf_path, context, threads, exact_f32)
        lc = self.lc = session.lc
        self.sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        bias = (lc.llama_logit_bias * 1)(lc.llama_logit_bias(eos_token_id, float("-inf")))
        lc.llama_sampler_chain_add(self.sampler, lc.llama_sampler_init_logit_bias(session.vocab, 1, bias))
        lc.llama_sampler_chain_add(self.sampler, lc.llama_sampler_init_greedy())
        self.max_new = max_new
        self.token = (lc.llama_token * 1)()

    def generate(self, embeds: np.ndarray) -> tuple[float, float, list[int]]:
        """(seconds to the first token, seconds of the decode steps, the tokens) for ``embeds``
        (S, D) f32: the cache cleared, the prompt decoded, ``max_new`` greedy tokens."""
        lc, context = self.lc, self.session.context
        start = time.perf_counter()
        self.session.feed_prompt(embeds)
        lc.llama_sampler_reset(self.sampler)
        tokens = [lc.llama_sampler_sample(self.sampler, context, -1)]
        first = time.perf_counter()
        for _ in range(self.max_new - 1):
            self.token[0] = tokens[-1]
            if lc.llama_decode(context, lc.llama_batch_get_one(self.token, 1)) != 0:
                raise RuntimeError("llama_decode failed on a decode step")
            tokens.append(lc.llama_sampler_sample(self.sampler, context, -1))
        end = time.perf_counter()
        return first - start, end - first, tokens

    def close(self) -> None:
        self.lc.llama_sampler_free(self.sampler)
        if self.owns_session:
            self.session.close()


def time_llamacpp(where: str, embeds: np.ndarray, max_new: int, repeats: int, threads: int, eos_token_id: int,
                  exact_f32: bool, context: int) -> dict:
    """One row of the llama.cpp head to head in this process: ``repeats`` generations after a warm-up."""
    from eov_edge.runtime.pipeline import peak_rss_mb

    decoder = LlamaCppDecoder(Path(where), max_new, threads, eos_token_id, exact_f32, context)
    decoder.generate(embeds)  # warm-up
    runs = [decoder.generate(embeds) for _ in range(repeats)]
    steps = max(max_new - 1, 1)
    return {"ttft_ms": [1000 * r[0] for r in runs], "decode_ms_per_token": [1000 * r[1] / steps for r in runs],
            "tokens": runs[-1][2], "peak_rss_mb": round(peak_rss_mb(), 1), "threads": threads,
            "pid": os.getpid()}
