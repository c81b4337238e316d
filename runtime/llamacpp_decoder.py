"""Decode steps on llama.cpp: the decoder's GGUF (``eov-export gguf``) run through llama-cpp-python.

On a CPU host, llama.cpp's ggml kernels stream a decode step's weights faster than ONNX Runtime's
(MLAS) at batch 1, with one thread above all, while ONNX Runtime's GEMMs run prompts faster. So
:class:`LlamaCppDecodeSession` takes the decode steps of batch-1 answers, and the prompt either

- ``prefill="onnxruntime"``: runs through the ONNX Runtime decoder as before, and its keys and
  values are handed to llama.cpp's cache (:meth:`LlamaCppDecodeSession.load_prompt`: written in
  llama.cpp's own sequence-state format and read back by ``llama_state_seq_set_data``), the first
  token chosen from ONNX Runtime's logits; both engines' weights stay in memory;
- ``prefill="llamacpp"``: is fed to llama.cpp as embeddings (``llama_batch.embd``): one engine,
  one copy of the decoder's weights.

The state format is llama.cpp's, not a public contract: every session checks it at start
(:meth:`LlamaCppDecodeSession.check_state_format`: a state llama.cpp wrote is parsed and rewritten
byte for byte) and refuses the handoff with what to do where it changed.

Keys are stored after the rotary embedding by both engines, in the same NeoX layout (Qwen2), so
they are copied as they are: (KV, P, hd) per layer into llama.cpp's rows of KV*hd per position.
"""

from __future__ import annotations

import ctypes
import struct
import time
from pathlib import Path

import numpy as np

from eov_edge.core.errors import EOVError

GGML_F32, GGML_F16 = 0, 1
_NUMPY_OF_GGML = {GGML_F32: np.float32, GGML_F16: np.float16}
PREFILLS = ("onnxruntime", "llamacpp")
STATE_HEADER_BYTES = 8  # llama_context's state magic (u32) and the sequence id (i32)


class LlamaCppError(EOVError, RuntimeError):
    """llama.cpp is missing, refused the GGUF, or its cache format is not the one written here."""


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as err:
        raise LlamaCppError(f"the llama.cpp decoder needs llama-cpp-python ({err}); pip install llama-cpp-python, "
                            "or run without --decoder-backend llamacpp") from None
    return llama_cpp


_QUIET_LOG = None


def quiet_llama_logs(llama_cpp) -> None:
    """Send llama.cpp's log lines (every load prints dozens) nowhere; the callback is kept alive for
    the process's later calls."""
    global _QUIET_LOG
    if _QUIET_LOG is None:
        _QUIET_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_QUIET_LOG, None)


def sequence_state(header: bytes, keys: list[np.ndarray], values: list[np.ndarray], v_trans: bool, k_type: int,
                   v_type: int) -> bytes:
    """llama.cpp's state of one sequence holding positions 0..P-1: ``header`` (the context's magic
    and the sequence id, as ``llama_state_seq_get_data`` writes them), then the cache's part
    (``llama_kv_cache::state_write``, one stream): keys and values per layer, (KV, P, hd) float32
    each, stored as ``k_type`` / ``v_type`` (F32 or F16); values transposed where llama.cpp keeps
    them so (no flash attention)."""
    kv_heads, length, head_dim = keys[0].shape
    width = kv_heads * head_dim  # n_embd_k_gqa
    parts = [header, struct.pack("<II", 1, length)]  # n_stream, cell_count
    parts.append(np.array([(p, 1, 0) for p in range(length)], dtype=np.int32).tobytes())  # pos, n_seq_id, seq_id
    parts.append(struct.pack("<II", int(v_trans), len(keys)))
    k_dtype, v_dtype = _NUMPY_OF_GGML[k_type], _NUMPY_OF_GGML[v_type]
    k_size, v_size = np.dtype(k_dtype).itemsize, np.dtype(v_dtype).itemsize
    for k in keys:
        rows = np.ascontiguousarray(k.transpose(1, 0, 2), dtype=k_dtype)  # (P, KV, hd): a row per position
        parts += [struct.pack("<iQ", k_type, width * k_size), rows.tobytes()]
    for v in values:
        if v_trans:
            columns = np.ascontiguousarray(v.transpose(0, 2, 1), dtype=v_dtype)  # (KV, hd, P): a row per channel
            parts += [struct.pack("<iII", v_type, v_size, width), columns.tobytes()]
        else:
            rows = np.ascontiguousarray(v.transpose(1, 0, 2), dtype=v_dtype)
            parts += [struct.pack("<iQ", v_type, width * v_size), rows.tobytes()]
    return b"".join(parts)


def parse_sequence_state(state: bytes, layers: int, kv_heads: int, head_dim: int):
    """The inverse of :func:`sequence_state`: (header, keys, values as (KV, P, hd) float32, v_trans,
    k_type, v_type). Raises ValueError where ``state`` is not in that layout."""
    width = kv_heads * head_dim
    offset = STATE_HEADER_BYTES
    header = state[:STATE_HEADER_BYTES]

    def take(fmt: str):
        nonlocal offset
        size = struct.calcsize(fmt)
        if offset + size > len(state):
            raise ValueError("state ends early")
        out = struct.unpack_from(fmt, state, offset)
        offset += size
        return out

    def take_array(dtype, count: int) -> np.ndarray:
        nonlocal offset
        size = np.dtype(dtype).itemsize * count
        if offset + size > len(state):
            raise ValueError("state ends early")
        out = np.frombuffer(state, dtype, count, offset)
        offset += size
        return out

    streams, length = take("<II")
    if streams != 1:
        raise ValueError(f"{streams} streams")
    cells = take_array(np.int32, 3 * length).reshape(length, 3)
    if not (cells[:, 0] == np.arange(length)).all() or not (cells[:, 1] == 1).all():
        raise ValueError("cells are not positions 0..P-1 of one sequence")
    v_trans, n_layer = take("<II")
    if n_layer != layers:
        raise ValueError(f"{n_layer} layers, expected {layers}")
    keys, values, k_type, v_type = [], [], None, None
    for _ in range(layers):
        k_type, row = take("<iQ")
        if k_type not in _NUMPY_OF_GGML or row != width * np.dtype(_NUMPY_OF_GGML[k_type]).itemsize:
            raise ValueError(f"key type {k_type}, row of {row} bytes")
        k = take_array(_NUMPY_OF_GGML[k_type], length * width).reshape(length, kv_heads, head_dim)
        keys.append(k.transpose(1, 0, 2).astype(np.float32))
    for _ in range(layers):
        if v_trans:
            v_type, size, columns = take("<iII")
            if v_type not in _NUMPY_OF_GGML or columns != width:
                raise ValueError(f"value type {v_type}, {columns} channels")
            v = take_array(_NUMPY_OF_GGML[v_type], width * length).reshape(kv_heads, head_dim, length)
            values.append(v.transpose(0, 2, 1).astype(np.float32))
        else:
            v_type, row = take("<iQ")
            if v_type not in _NUMPY_OF_GGML:
                raise ValueError(f"value type {v_type}")
            v = take_array(_NUMPY_OF_GGML[v_type], length * width).reshape(length, kv_heads, head_dim)
            values.append(v.transpose(1, 0, 2).astype(np.float32))
    if offset != len(state):
        raise ValueError(f"{len(state) - offset} bytes left over")
    return header, keys, values, bool(v_trans), k_type, v_type


class LlamaCppDecodeSession:
    """One GGUF decoder in llama.cpp, one sequence (batch 1) of up to ``capacity`` positions.

    ``exact_f32``: an F32 KV cache and no flash attention (an F32 GGUF's answers then follow
    PyTorch's); otherwise llama.cpp's defaults (F16 cache, flash attention where it chooses).
    """

    def __init__(self, path: Path, capacity: int, threads: int, exact_f32: bool) -> None:
        lc = import_llama_cpp()
        self.lc = lc
        quiet_llama_logs(lc)
        lc.llama_backend_init()
        self.path = Path(path)
        if not self.path.is_file():
            raise LlamaCppError(f"{self.path}: no such GGUF; write it with eov-export gguf")
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), lc.llama_model_default_params())
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {self.path}; write it again with eov-export gguf")
        # the decoder's shape as llama.cpp read it (the caller checks it against its artifacts)
        self.num_layers, self.hidden = lc.llama_model_n_layer(self.model), lc.llama_model_n_embd(self.model)
        self.kv_heads = lc.llama_model_n_head_kv(self.model)
        self.head_dim = self.hidden // lc.llama_model_n_head(self.model)
        params = lc.llama_context_default_params()
        params.n_ctx = max(capacity, 16)
        params.n_batch = params.n_ubatch = min(max(capacity, 16), 512)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        if exact_f32:
            params.type_k = params.type_v = lc.GGML_TYPE_F32
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.context = lc.llama_init_from_model(self.model, params)
        if not self.context:
            lc.llama_model_free(self.model)
            raise LlamaCppError(f"llama.cpp could not make a context of {capacity} positions for {self.path}")
        self.capacity = capacity
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.memory = lc.llama_get_memory(self.context)
        self._token = (lc.llama_token * 1)()
        # the argmax of each step's logits, taken by llama.cpp's greedy sampler in C (the token rule
        # reads the logits only where it overrides it or reports probabilities)
        self._greedy = lc.llama_sampler_init_greedy()
        self.argmax = 0
        self._logits: tuple[int, np.ndarray] | None = None  # (address, (1, V) view) of llama.cpp's buffer
        self._format: tuple[bytes, bool, int, int] | None = None
        self.timings: list[float] = []  # seconds per llama_decode call (prompts and steps), as Runner.timings
        # the prompt batch, kept between answers (made again only for a longer prompt): positions and
        # the sequence id written once, the logits flag moved to each prompt's last position
        self._batch = None
        self._batch_size = 0
        self._batch_last: int | None = None

    # -- the prompt ---------------------------------------------------------------------------
    def check_state_format(self) -> tuple[bytes, bool, int, int]:
        """(header, v_trans, k_type, v_type) of this context's states, after checking that a state llama.cpp
        writes is one :func:`sequence_state` rewrites byte for byte (three positions fed first)."""
        if self._format is None:
            self.prefill(np.random.default_rng(0).standard_normal((3, self.hidden)).astype(np.float32) * 0.02)
            state = self._get_state()
            try:
                header, keys, values, v_trans, k_type, v_type = parse_sequence_state(
                    state, self.num_layers, self.kv_heads, self.head_dim)
                same = sequence_state(header, keys, values, v_trans, k_type, v_type) == state
            except ValueError as err:
                same, why = False, str(err)
            else:
                why = "rewritten, it differs"
            if not same:
                raise LlamaCppError(f"this llama.cpp ({self.lc.__version__}) keeps its cache in a layout the prompt "
                                    f"handoff does not write ({why}); run with --prefill llamacpp")
            self._format = (header, v_trans, k_type, v_type)
            self.clear()
        return self._format

    def load_prompt(self, keys: list[np.ndarray], values: list[np.ndarray]) -> None:
        """Make the sequence the prompt whose keys and values (KV, P, hd) per layer another engine
        computed (positions 0..P-1)."""
        header, v_trans, k_type, v_type = self.check_state_format()
        length = keys[0].shape[1]
        if length >= self.capacity:
            raise LlamaCppError(f"a prompt of {length} positions fills llama.cpp's context of {self.capacity}")
        state = sequence_state(header, keys, values, v_trans, k_type, v_type)
        self.clear()
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if self.lc.llama_state_seq_set_data(self.context, buffer, len(state), 0) != len(state):
            raise LlamaCppError("llama.cpp refused the prompt's keys and values; run with --prefill llamacpp")

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Feed ``embeds`` (S, D) f32 from an empty sequence; the last position's logits (1, V)
        (:meth:`step`'s view); :attr:`argmax` is theirs."""
        self.feed_prompt(embeds)
        return self._after_decode()

    def feed_prompt(self, embeds: np.ndarray) -> None:
        """Clear the sequence and decode ``embeds`` (S, D) f32 as its positions 0..S-1 (logits of the
        last position only)."""
        length = embeds.shape[0]
        if length >= self.capacity:
            raise LlamaCppError(f"a prompt of {length} positions fills llama.cpp's context of {self.capacity}")
        if embeds.shape[1] != self.hidden:
            raise LlamaCppError(f"prompt embeddings of width {embeds.shape[1]} for a decoder {self.hidden} wide")
        self.clear()
        batch = self._prompt_batch(length)
        ctypes.memmove(batch.embd, np.ascontiguousarray(embeds, np.float32).ctypes.data, length * self.hidden * 4)
        start = time.perf_counter()
        if self.lc.llama_decode(self.context, batch) != 0:
            raise LlamaCppError("llama.cpp failed on the prompt")
        self.timings.append(time.perf_counter() - start)

    def _prompt_batch(self, length: int):
        lc = self.lc
        if length > self._batch_size:
            if self._batch is not None:
                lc.llama_batch_free(self._batch)
            self._batch = lc.llama_batch_init(length, self.hidden, 1)
            for i in range(length):
                self._batch.pos[i], self._batch.n_seq_id[i], self._batch.logits[i] = i, 1, 0
                self._batch.seq_id[i][0] = 0
            self._batch_size, self._batch_last = length, None
        batch = self._batch
        if self._batch_last is not None:
            batch.logits[self._batch_last] = 0
        batch.n_tokens = length
        batch.logits[length - 1] = 1
        self._batch_last = length - 1
        return batch

    # -- decode steps ---------------------------------------------------------------------------
    def step(self, token: int) -> np.ndarray:
        """Feed one token after the sequence; its logits (1, V), a view of llama.cpp's buffer that the
        next call overwrites; :attr:`argmax` is theirs."""
        self._token[0] = token
        start = time.perf_counter()
        if self.lc.llama_decode(self.context, self.lc.llama_batch_get_one(self._token, 1)) != 0:
            raise LlamaCppError("llama.cpp failed on a decode step (its context is full?)")
        self.timings.append(time.perf_counter() - start)
        return self._after_decode()

    def _after_decode(self) -> np.ndarray:
        lc = self.lc
        self.argmax = lc.llama_sampler_sample(self._greedy, self.context, -1)
        pointer = lc.llama_get_logits_ith(self.context, -1)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if self._logits is None or self._logits[0] != address:  # the same buffer step after step
            self._logits = (address, np.ctypeslib.as_array(pointer, shape=(1, self.vocab)))
        return self._logits[1]

    def clear(self) -> None:
        # cells marked empty; their data is overwritten before it is read (clearing it too would
        # write the whole context's cache on every answer)
        self.lc.llama_memory_clear(self.memory, False)

    def _get_state(self) -> bytes:
        size = self.lc.llama_state_seq_get_size(self.context, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = self.lc.llama_state_seq_get_data(self.context, buffer, size, 0)
        return bytes(buffer[:written])

    def close(self) -> None:
        if getattr(self, "context", None):
            if self._batch is not None:
                self.lc.llama_batch_free(self._batch)
                self._batch = None
            self.lc.llama_sampler_free(self._greedy)
            self.lc.llama_free(self.context)
            self.lc.llama_model_free(self.model)
            self.context = self.model = None
