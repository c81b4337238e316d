"""The decoder for ONNX Runtime on CPU: the portable decoder's weights in ORT's fused contrib ops.

``eov-export onnx --decoder ort-cpu`` replaces ``decoder.onnx`` with this graph. It computes the same
function as the portable graph (``decoder_module.ExportDecoder``) with ONNX Runtime's own kernels,
the way ONNX Runtime GenAI's model builder lays out a Qwen2 decoder:

- ``GroupQueryAttention`` (com.microsoft) per layer: RoPE inside (``do_rotary``, cos/sin tables of
  the model's ``inv_freq``), grouped K/V heads, and a KV buffer shared between ``past`` and
  ``present``: the runtime binds one (B, KV, C, hd) array per layer as both, the op writes the new
  positions' K/V into it at each row's length. Nothing is copied, nothing is masked by hand;
- ``SkipSimplifiedLayerNormalization``: residual Add + RMSNorm in one kernel;
- one MatMul for Q/K/V (+ bias unless it is all zero), gate and up as two MatMuls (no Split copy),
  logits only for the positions asked for (``logits_index``: the last one, except when the runtime
  checks a speculative draft, :mod:`eov_edge.runtime.speculative`).

Contract (manifest ``decoder_kind: "ort-cpu"``): ``inputs_embeds`` (B, S1, D) f32 and ``input_ids``
(B, S2) i64 with ``embed_table`` (V, D) (the runtime's table, f32 or f16, bound by address): the S =
S1 + S2 fed positions are the ``inputs_embeds`` rows, then the table rows of ``input_ids`` (a prompt
with its image embeddings comes as embeddings, a decode step as its token id); ``seqlens_k`` (B,)
i32 = each row's valid length including the S fed positions, minus one,
``total_sequence_length`` () i32 = the longest row's length including them, ``logits_index`` (K,)
i64 = which of the S fed positions get logits (``[-1]``: the last), ``past.{i}.key|value``
(B, KV, C, hd) -> ``logits`` (B, K, V), ``next_tokens`` (B, K) i64 (each logits row's argmax, the
first of equal maxima as numpy's), ``present.{i}.key|value`` (B, KV, C, hd). The greedy loop binds
``next_tokens`` and ``input_ids`` to one buffer, so a step's token is the next step's input with no
host work in between (the table Gather runs first, the ArgMax last, in every order of the graph's
nodes). Several positions fed on top of a filled cache (a draft to check) run ONNX Runtime's "interactive" GroupQueryAttention:
batch 1 only.
Rows start at slot 0 (no left padding): the runtime prefills prompts unpadded (rows of one length
together) and decodes the batch together, each row at its own length. ONNX Runtime only: TensorRT and the
TensorRT recipes take the portable graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.manifest import LOGITS_INDEX, SEQLENS_K, TOTAL_SEQUENCE_LENGTH

MS_DOMAIN = "com.microsoft"


def export_weights(language_model) -> dict[str, np.ndarray]:
    """``ExportDecoder``'s tensors by name (fused Q/K/V and gate/up, (in, out) layouts, inv_freq).
    Read from the module, not from the portable graph: the ONNX exporter merges identical
    initializers (e.g. RMSNorm weights that are all ones), so their names are not a contract."""
    from eov_edge.export.decoder_module import ExportDecoder

    module = ExportDecoder(language_model)
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return {name: tensor.detach().float().numpy() for name, tensor in tensors.items()}


def rotary_tables(inv_freq: np.ndarray, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (max_positions, hd/2) f32, computed as Qwen2RotaryEmbedding does (float32 product)."""
    positions = np.arange(max_positions, dtype=np.float32)[:, None]
    angles = positions * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build_ort_decoder(weights: dict[str, np.ndarray], target: Path, manifest: mf.Manifest,
                      external_threshold: int, embedding_dtype: str = "float32") -> None:
    """Write the fused decoder for ``manifest``'s model to ``target`` (replacing what is there) from
    :func:`export_weights`; weights as external data above ``external_threshold`` bytes, as the
    portable graphs. ``embedding_dtype``: the embedding table's (``embed_table``'s) dtype."""
    import onnx
    from onnx import TensorProto, helper

    text = manifest.model_config["text_config"]
    layers, kv, hd = manifest.num_layers, manifest.num_kv_heads, manifest.head_dim
    heads = text["num_attention_heads"]
    hidden, intermediate = text["hidden_size"], text["intermediate_size"]
    vocab = weights["lm_head"].shape[1]
    eps = float(text["rms_norm_eps"])
    missing = [n for n in ("inv_freq", "lm_head", "final_norm", "qkv_weight.0") if n not in weights]
    if missing:
        raise ValueError(f"not ExportDecoder's weights (no {missing})")
    cos, sin = rotary_tables(weights["inv_freq"], manifest.max_context)
    target = Path(target)
    data_file = target.with_name(target.name + ".data")
    for stale in (target, data_file):
        stale.unlink(missing_ok=True)
    external = sum(t.nbytes for t in weights.values()) > external_threshold
    store = _InitializerStore(data_file if external else None)
    initializers = store.tensors
    store.add(cos, "cos_cache")
    store.add(sin, "sin_cache")

    def weight(name: str) -> str:
        store.add(weights[name], name)
        return name

    nodes = [
        # the fed positions (B, S1 + S2, D): inputs_embeds' rows, then the table rows of input_ids
        # (widened to f32: the Cast is dropped by ONNX Runtime where the table is f32 already)
        helper.make_node("Gather", [mf.EMBED_TABLE, mf.INPUT_IDS], ["ids.embeds_table"], name="embed_tokens", axis=0),
        helper.make_node("Cast", ["ids.embeds_table"], ["ids.embeds"], name="embed_tokens_f32", to=TensorProto.FLOAT),
        helper.make_node("Concat", [mf.INPUTS_EMBEDS, "ids.embeds"], ["embeds"], name="fed_positions", axis=1),
    ]
    past = mf.past_names(layers)
    present = mf.present_names(layers)
    nodes.append(helper.make_node("SimplifiedLayerNormalization", ["embeds", weight("input_norm.0")],
                                  ["layer0.norm"], name="layer0.input_norm", epsilon=eps, axis=-1,
                                  stash_type=1))
    residual, normed = "embeds", "layer0.norm"
    for i in range(layers):
        p = f"layer{i}"
        qkv = f"{p}.qkv_mm"
        nodes.append(helper.make_node("MatMul", [normed, weight(f"qkv_weight.{i}")], [qkv], name=f"{p}.qkv_proj"))
        if np.any(weights[f"qkv_bias.{i}"]):  # an all-zero bias (random init) adds nothing: no node
            nodes.append(helper.make_node("Add", [qkv, weight(f"qkv_bias.{i}")], [f"{p}.qkv"], name=f"{p}.qkv_bias"))
            qkv = f"{p}.qkv"
        # gate and up as two MatMuls: one fused MatMul needs a Split that copies (S, 2I) per layer,
        # which costs the prefill more than the second GEMM call saves the decode step
        gate_up = weights[f"gate_up_weight.{i}"]  # (D, 2I)
        store.add(gate_up[:, :intermediate], f"gate_weight.{i}")
        store.add(gate_up[:, intermediate:], f"up_weight.{i}")
        nodes += [
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", past[2 * i], past[2 * i + 1], SEQLENS_K, TOTAL_SEQUENCE_LENGTH,
                 "cos_cache", "sin_cache"],
                [f"{p}.attn", present[2 * i], present[2 * i + 1]], name=f"{p}.attention", domain=MS_DOMAIN,
                num_heads=heads, kv_num_heads=kv, scale=float(hd ** -0.5), do_rotary=1, rotary_interleaved=0,
                local_window_size=-1),
            helper.make_node("MatMul", [f"{p}.attn", weight(f"o_weight.{i}")], [f"{p}.o"], name=f"{p}.o_proj"),
            helper.make_node("SkipSimplifiedLayerNormalization", [residual, f"{p}.o", weight(f"post_norm.{i}")],
                             [f"{p}.post_norm", "", "", f"{p}.residual_attn"], name=f"{p}.post_norm",
                             domain=MS_DOMAIN, epsilon=eps),
            helper.make_node("MatMul", [f"{p}.post_norm", f"gate_weight.{i}"], [f"{p}.gate"], name=f"{p}.gate_proj"),
            helper.make_node("MatMul", [f"{p}.post_norm", f"up_weight.{i}"], [f"{p}.up"], name=f"{p}.up_proj"),
            helper.make_node("Sigmoid", [f"{p}.gate"], [f"{p}.gate_sigmoid"], name=f"{p}.silu_sigmoid"),
            helper.make_node("Mul", [f"{p}.gate", f"{p}.gate_sigmoid"], [f"{p}.silu"], name=f"{p}.silu"),
            helper.make_node("Mul", [f"{p}.silu", f"{p}.up"], [f"{p}.act"], name=f"{p}.gated"),
            helper.make_node("MatMul", [f"{p}.act", weight(f"down_weight.{i}")], [f"{p}.down"], name=f"{p}.down_proj"),
        ]
        last = i == layers - 1
        norm_weight = weight("final_norm") if last else weight(f"input_norm.{i + 1}")
        normed = "final.norm" if last else f"layer{i + 1}.norm"
        nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [f"{p}.residual_attn", f"{p}.down",
                                                                           norm_weight],
                                      [normed, "", "", f"{p}.residual_mlp"], name=f"{p}.next_norm",
                                      domain=MS_DOMAIN, epsilon=eps))
        residual = f"{p}.residual_mlp"
    nodes += [
        # (B, K, D): the fed positions whose logits are wanted; [-1] but for a speculative check
        helper.make_node("Gather", [normed, LOGITS_INDEX], ["final.kept"], name="logits_positions", axis=1),
        helper.make_node("MatMul", ["final.kept", weight("lm_head")], [mf.LOGITS], name="lm_head"),
        # (B, K): the greedy token of each logits row, in the graph (no host pass over the vocabulary)
        helper.make_node("ArgMax", [mf.LOGITS], [mf.NEXT_TOKENS], name="next_tokens", axis=-1, keepdims=0,
                         select_last_index=0),
    ]
    cache_shape = ["batch", kv, "capacity", hd]
    inputs = [helper.make_tensor_value_info(mf.INPUTS_EMBEDS, TensorProto.FLOAT, ["batch", "seq", hidden]),
              helper.make_tensor_value_info(mf.INPUT_IDS, TensorProto.INT64, ["batch", "ids_seq"]),
              helper.make_tensor_value_info(mf.EMBED_TABLE, _tensor_type(embedding_dtype), [vocab, hidden]),
              helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []),
              helper.make_tensor_value_info(LOGITS_INDEX, TensorProto.INT64, ["logits"])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, cache_shape) for name in past]
    outputs = [helper.make_tensor_value_info(mf.LOGITS, TensorProto.FLOAT, ["batch", "logits", vocab]),
               helper.make_tensor_value_info(mf.NEXT_TOKENS, TensorProto.INT64, ["batch", "logits"])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, cache_shape) for name in present]
    graph = helper.make_graph(nodes, "eov_decoder_ort_cpu", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="eov-edge")
    model.ir_version = 10
    store.close()
    onnx.save_model(model, str(target))  # the weights are in data_file already where external


def prompt_feed(artifacts: Path, manifest: mf.Manifest, embeds: np.ndarray, cached: int, logits_index: np.ndarray,
                cache: dict[str, np.ndarray]) -> dict:
    """A feed of the fused decoder in a session of its own (checks and benchmarks; the runtime binds
    its buffers instead, :mod:`eov_edge.runtime.kv_stream`): ``embeds`` (1, S, D) as positions
    cached..cached+S-1 on ``cache`` (past name -> (1, KV, C, hd)), logits at ``logits_index``."""
    end = cached + embeds.shape[1]
    return {mf.INPUTS_EMBEDS: embeds, SEQLENS_K: np.array([end - 1], np.int32),
            TOTAL_SEQUENCE_LENGTH: np.array(end, np.int32), LOGITS_INDEX: logits_index,
            mf.INPUT_IDS: np.zeros((1, 0), np.int64), mf.EMBED_TABLE: np.load(Path(artifacts) / mf.EMBEDDING_FILE),
            **cache}


def empty_cache(manifest: mf.Manifest, capacity: int) -> dict[str, np.ndarray]:
    """Zeroed past buffers (1, KV, ``capacity``, hd) by name, for :func:`prompt_feed`."""
    return {name: np.zeros((1, manifest.num_kv_heads, capacity, manifest.head_dim), np.float32)
            for name in mf.past_names(manifest.num_layers)}


class _InitializerStore:
    """The fused decoder's initializers, each written to ``data_file`` as it comes (external data,
    onnx's layout: one file, tensors back to back) where given, else held in the graph. Writing
    them one by one keeps one weight's bytes in memory beside the model's, not the whole decoder
    twice over as serializing a graph of in-memory tensors does (eov-2b: about 6 GB per copy)."""

    def __init__(self, data_file: Path | None) -> None:
        self.data_file = data_file
        self.file = open(data_file, "wb") if data_file is not None else None  # noqa: SIM115 (closed by close())
        self.tensors: list = []

    def add(self, array: np.ndarray, name: str) -> None:
        from onnx import TensorProto, numpy_helper

        array = np.ascontiguousarray(array, dtype=np.float32)  # a copy only where a view is strided
        if self.file is None:
            self.tensors.append(numpy_helper.from_array(array, name))
            return
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape,
                             data_location=TensorProto.EXTERNAL)
        offset = self.file.tell()
        array.tofile(self.file)
        for key, value in (("location", self.data_file.name), ("offset", offset), ("length", array.nbytes)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        self.tensors.append(tensor)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _tensor_type(dtype: str) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def set_embedding_dtype(path: Path, dtype: str) -> bool:
    """Declare the fused decoder's ``embed_table`` input as ``dtype`` (a quantization recipe stores
    the table in float16; the graph's Cast widens the gathered rows). Rewrites ``path``'s graph
    (not its external data) through a temporary file; False if the graph has no such input."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    inputs = {value.name: value for value in model.graph.input}
    if mf.EMBED_TABLE not in inputs:
        return False
    tensor_type = inputs[mf.EMBED_TABLE].type.tensor_type
    if tensor_type.elem_type == _tensor_type(dtype):
        return True
    tensor_type.elem_type = _tensor_type(dtype)
    # a quantizer may have recorded the gathered rows' type (value_info): it follows the table's
    gathered = {out for node in model.graph.node if mf.EMBED_TABLE in node.input for out in node.output}
    for value in model.graph.value_info:
        if value.name in gathered:
            value.type.tensor_type.elem_type = _tensor_type(dtype)
    temporary = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(temporary))  # external tensors keep their location: the data file is untouched
    temporary.replace(path)
    return True
