"""Which MatMulNBits kernel runs an INT4 decoder's prompts faster on this CPU.

INT4 CPU artifacts may run prompts in a second ONNX Runtime session of the decoder whose session
config (``mf.PREFILL_SESSION_CONFIG``: ``mlas.qnbit.force_fp32``) picks fp32 compute, where decode
steps use int8 compute. Which of the two is faster for prompts depends on the CPU. Timing both on
the decoder itself would hold two copies of its weights at once: the small preset's INT4 process
peaked at 179 MiB that way against 140 MiB with one session, and for a 2B decoder the copy is about
a gigabyte. So the choice is measured here on one MatMulNBits of each of the decoder's weight shapes
(random 4-bit weights, a few MiB), in both configs, alternating, each shape's time counted as many
times as the decoder holds it, before the decoder's own session is made. The rest of a prompt runs the same kernels in both sessions.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.runtime.ort_runner import session_options

# a second ONNX Runtime session on decoder.onnx for prompts, where the manifest asks for one
# (mf.PREFILL_SESSION_CONFIG: INT4 CPU artifacts); its runner's name in Pipeline.runners
PREFILL = "decoder prefill"
INT4_ACCURACY_LEVEL = 4  # int8 compute: what the ort-cpu-int4 recipe writes into every MatMulNBits


def decoder_matmul_shapes(manifest: mf.Manifest) -> Counter:
    """(K, N) -> how many of the decoder's quantized projections have that shape, from its quantized
    node names (``layer3.down_proj``, listed by every recipe) and the text config. The LM head is
    left out: a prompt runs it on its last position only."""
    text = manifest.model_config["text_config"]
    hidden, intermediate = int(text["hidden_size"]), int(text["intermediate_size"])
    heads, kv_heads = int(text["num_attention_heads"]), int(text["num_key_value_heads"])
    head_dim = int(text.get("head_dim") or hidden // heads)
    shape_of = {"qkv_proj": (hidden, (heads + 2 * kv_heads) * head_dim), "q_proj": (hidden, heads * head_dim),
                "k_proj": (hidden, kv_heads * head_dim), "v_proj": (hidden, kv_heads * head_dim),
                "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, intermediate),
                "up_proj": (hidden, intermediate), "down_proj": (intermediate, hidden)}
    names = manifest.quantization["graphs"][mf.DECODER]["quantized_nodes"]
    return Counter(shape_of[suffix] for name in names if (suffix := name.rsplit(".", 1)[-1]) in shape_of)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | str | bytes) -> bytes:
    """One protobuf field: an int as a varint, text or bytes length-delimited."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_type(elem_type: int, dims: list[int | str]) -> bytes:
    """onnx.TypeProto of a tensor: elem_type, then the shape's dims (dim_value or dim_param)."""
    shape = b"".join(_field(1, _field(2 if isinstance(d, str) else 1, d)) for d in dims)
    return _field(1, _field(1, elem_type) + _field(2, shape))


def matmul_nbits_probe(k: int, n: int, block_size: int, seed: int = 0) -> bytes:
    """A serialized ONNX model of one MatMulNBits (4 bits, ``block_size`` weights per scale, random
    weights): A (1, S, K) f32 -> Y (1, S, N). Written field by field (onnx.proto's numbers), as the
    ``onnx`` package costs the process 16 MiB to import and the runtime imports it nowhere else."""
    blocks = -(-k // block_size)
    rng = np.random.default_rng(seed)
    packed = rng.integers(0, 256, size=(n, blocks, block_size // 2), dtype=np.uint8)  # two weights a byte
    scales = ((rng.random(n * blocks, dtype=np.float32) + 0.5) * 0.01).astype("<f4")
    float32, uint8, attribute_int = 1, 2, 2  # TensorProto.FLOAT, TensorProto.UINT8, AttributeProto.INT

    def initializer(name: str, array: np.ndarray, data_type: int) -> bytes:
        return b"".join(_field(1, d) for d in array.shape) + _field(2, data_type) + _field(8, name) \
            + _field(9, array.tobytes())

    attributes = {"K": k, "N": n, "bits": 4, "block_size": block_size, "accuracy_level": INT4_ACCURACY_LEVEL}
    node = b"".join(_field(1, name) for name in ("A", "B", "scales")) + _field(2, "Y") + _field(4, "MatMulNBits") \
        + b"".join(_field(5, _field(1, key) + _field(3, value) + _field(20, attribute_int))
                   for key, value in attributes.items()) + _field(7, "com.microsoft")
    graph = _field(1, node) + _field(2, "matmul_nbits_probe") \
        + _field(5, initializer("B", packed, uint8)) + _field(5, initializer("scales", scales, float32)) \
        + _field(11, _field(1, "A") + _field(2, _tensor_type(float32, [1, "S", k]))) \
        + _field(12, _field(1, "Y") + _field(2, _tensor_type(float32, [1, "S", n])))
    opsets = _field(8, _field(1, "") + _field(2, 17)) + _field(8, _field(1, "com.microsoft") + _field(2, 1))
    return _field(1, 8) + opsets + _field(7, graph)  # ir_version 8


def time_prompt_kernels(manifest: mf.Manifest, prefill_config: dict[str, str], threads: int | None = None,
                        tokens: int = 128, rounds: int = 3) -> dict:
    """Milliseconds of the decoder's projections over a prompt of ``tokens`` positions in each session's
    config: ``mf.DECODER`` (the decode session's, none) and ``"decoder prefill"`` (``prefill_config``),
    median of ``rounds`` alternating rounds after a warm-up. Returns {"chosen", "prompt_tokens", "ms",
    "measured"}."""
    import onnxruntime as ort

    block_size = int(manifest.quantization["graphs"][mf.DECODER].get("block_size") or 32)
    length = max(1, min(tokens, manifest.max_context - 1))
    shapes = decoder_matmul_shapes(manifest)
    configs = {PREFILL: dict(prefill_config), mf.DECODER: {}}
    seconds = {name: [0.0] * rounds for name in configs}  # per round: the shapes' times, counted
    rng = np.random.default_rng(1)
    for shape, count in shapes.items():  # two sessions alive at a time, alternating
        model = matmul_nbits_probe(*shape, block_size)
        sessions = {name: ort.InferenceSession(model, session_options(threads, config),
                                               providers=["CPUExecutionProvider"])
                    for name, config in configs.items()}
        feed = {"A": rng.standard_normal((1, length, shape[0]), dtype=np.float32)}  # (1, S, K)
        for index in range(rounds + 1):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feed)
                if index:  # the first round warms both up
                    seconds[name][index - 1] += count * (time.perf_counter() - start)
        del sessions
    ms = {name: round(1000 * statistics.median(times), 2) for name, times in seconds.items()}
    return {"chosen": mf.DECODER if ms[mf.DECODER] < ms[PREFILL] else PREFILL, "prompt_tokens": length, "ms": ms,
            "measured": f"one MatMulNBits of each of the decoder's {len(shapes)} weight shapes, random weights, "
                        "counted as often as the decoder holds it"}
