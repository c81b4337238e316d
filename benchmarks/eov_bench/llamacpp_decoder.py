"""llama.cpp's decode loop through llama-cpp-python's C API, as the head to head's worker runs it
(:mod:`eov_edge.bench.llamacpp`): a prompt of embeddings (``llama_batch.embd``), then one
``llama_decode`` of one token per step with the greedy sampler in C, what ``llama-cli`` does."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import numpy as np


class LlamaCppDecoder:
    """One llama.cpp model and context: greedy tokens after a prompt of embeddings, EOS suppressed
    (every answer exactly ``max_new`` tokens, as the runtime's ``min_new_tokens``)."""

    def __init__(self, gguf_path: Path, prompt_length: int, max_new: int, threads: int, eos_token_id: int,
                 exact_f32: bool, context: int | None = None):
        import llama_cpp as lc

        from eov_edge.runtime.llamacpp_decoder import quiet_llama_logs

        self.lc = lc
        quiet_llama_logs(lc)
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        context_params = lc.llama_context_default_params()
        context_params.n_ctx = context or prompt_length + max_new + 16  # ours: the model's context
        context_params.n_batch = context_params.n_ubatch = max(512, prompt_length)
        context_params.n_seq_max = 1
        context_params.n_threads = context_params.n_threads_batch = threads
        context_params.no_perf = True
        if exact_f32:  # F32 all through: tokens comparable with PyTorch's
            context_params.type_k = context_params.type_v = lc.GGML_TYPE_F32
            context_params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.context = lc.llama_init_from_model(self.model, context_params)
        if not self.context:
            raise RuntimeError(f"llama.cpp could not make a context for {gguf_path}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.hidden = lc.llama_model_n_embd(self.model)
        self.sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        bias = (lc.llama_logit_bias * 1)(lc.llama_logit_bias(eos_token_id, float("-inf")))
        lc.llama_sampler_chain_add(self.sampler, lc.llama_sampler_init_logit_bias(self.n_vocab, 1, bias))
        lc.llama_sampler_chain_add(self.sampler, lc.llama_sampler_init_greedy())
        self.max_new = max_new
        # the prompt batch, made once: positions, sequence ids, logits only for the last position
        self.prompt_length = prompt_length
        self.batch = lc.llama_batch_init(prompt_length, self.hidden, 1)
        self.batch.n_tokens = prompt_length
        for i in range(prompt_length):
            self.batch.pos[i] = i
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
            self.batch.logits[i] = int(i == prompt_length - 1)
        self.token = (lc.llama_token * 1)()

    def generate(self, embeds: np.ndarray) -> tuple[float, float, list[int]]:
        """(seconds to the first token, seconds of the decode steps, the tokens) for ``embeds``
        (S, D) f32: the cache cleared, the prompt decoded, ``max_new`` greedy tokens."""
        lc = self.lc
        if embeds.shape != (self.prompt_length, self.hidden):
            raise ValueError(f"prompt embeddings {embeds.shape}, expected {(self.prompt_length, self.hidden)}")
        start = time.perf_counter()
        lc.llama_memory_clear(lc.llama_get_memory(self.context), False)
        lc.llama_sampler_reset(self.sampler)
        ctypes.memmove(self.batch.embd, np.ascontiguousarray(embeds, np.float32).ctypes.data, embeds.nbytes)
        if lc.llama_decode(self.context, self.batch) != 0:
            raise RuntimeError("llama_decode failed on the prompt")
        tokens = [lc.llama_sampler_sample(self.sampler, self.context, -1)]
        first = time.perf_counter()
        for _ in range(self.max_new - 1):
            self.token[0] = tokens[-1]
            if lc.llama_decode(self.context, lc.llama_batch_get_one(self.token, 1)) != 0:
                raise RuntimeError("llama_decode failed on a decode step")
            tokens.append(lc.llama_sampler_sample(self.sampler, self.context, -1))
        end = time.perf_counter()
        return first - start, end - first, tokens

    def close(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_sampler_free(self.sampler)
        lc.llama_free(self.context)
        lc.llama_model_free(self.model)


def time_llamacpp(where: str, embeds: np.ndarray, max_new: int, repeats: int, threads: int, eos_token_id: int,
                  exact_f32: bool, context: int | None = None) -> dict:
    """One row of the llama.cpp head to head in this process: ``repeats`` generations after a warm-up."""
    from eov_edge.runtime.pipeline import peak_rss_mb

    decoder = LlamaCppDecoder(Path(where), embeds.shape[0], max_new, threads, eos_token_id, exact_f32, context)
    decoder.generate(embeds)  # warm-up
    runs = [decoder.generate(embeds) for _ in range(repeats)]
    steps = max(max_new - 1, 1)
    return {"ttft_ms": [1000 * r[0] for r in runs], "decode_ms_per_token": [1000 * r[1] / steps for r in runs],
            "tokens": runs[-1][2], "peak_rss_mb": round(peak_rss_mb(), 1), "threads": threads,
            "pid": os.getpid()}


