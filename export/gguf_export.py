"""The decoder as a GGUF file for llama.cpp (architecture ``qwen2``), from our own weights.

The language model is a ``Qwen2ForCausalLM``, which llama.cpp runs as its ``qwen2`` architecture.
:func:`write_gguf` writes its weights at F32 with the ``gguf`` package (the writer llama.cpp's own
``convert_hf_to_gguf.py`` uses), the same tensor names and layouts as that converter: Q/K/V with
their biases as three tensors (Qwen2's rotary is the NeoX layout, so no row permutation), the LM
head as ``output.weight`` unless tied. The tokenizer goes in as what it is, a byte-level BPE
(``gpt2`` model, ``qwen2`` pre-tokenizer): every id keeps its string, our special tokens are
control tokens, rows of the embedding past the tokenizer (padding to a round vocabulary) are
``[PAD{id}]`` tokens, as the converter writes them. llama.cpp's own quantizer
(:func:`quantize_gguf`, ``llama_model_quantize``) makes Q8_0, Q4_0 and Q4_K_M from that file.

Written to a temporary name beside the target, then renamed: no half-written GGUF is ever read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from eov_edge.core.errors import EOVError

# llama.cpp's file types (``enum llama_ftype`` in llama.h): what ``--gguf-type`` names
GGUF_FILE_TYPES = {"f32": 0, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}


class GGUFExportError(EOVError, RuntimeError):
    """The decoder could not be written to GGUF, or llama.cpp could not quantize it."""


def _tokenizer_vocab(tokenizer_json: Path, rows: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their GGUF token types, merges as "a b") of a byte-level BPE
    ``tokenizer.json``, padded with ``[PAD{id}]`` to the embedding's ``rows``."""
    import gguf

    data = json.loads(Path(tokenizer_json).read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise GGUFExportError(f"{tokenizer_json}: a {model.get('type')} tokenizer; GGUF export writes byte-level BPE "
                              "tokenizers (the ones the runtime and Qwen2 use)")
    by_id: dict[int, str] = {int(i): token for token, i in model["vocab"].items()}
    special = {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
    if not by_id or max(by_id) >= rows:
        raise GGUFExportError(f"{tokenizer_json} has ids up to {max(by_id, default=-1)} but the decoder's embedding "
                              f"has {rows} rows: the tokenizer is not this model's")
    tokens, types = [], []
    for i in range(rows):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, [int(t) for t in types], merges


def write_gguf(language_model, tokenizer_json: Path, target: Path, *, eos_token_id: int, pad_token_id: int,
               context_length: int | None = None, name: str = "eov-decoder") -> Path:
    """Write ``language_model`` (a ``Qwen2ForCausalLM``) to ``target`` as an F32 GGUF for llama.cpp."""
    import gguf
    import torch

    config = language_model.config
    if config.model_type != "qwen2":
        raise GGUFExportError(f"GGUF export writes Qwen2 decoders; this one is {config.model_type!r}")
    if getattr(config, "rope_scaling", None) not in (None, {}) and \
            (config.rope_scaling or {}).get("rope_type", "default") != "default":
        raise GGUFExportError(f"rope scaling {config.rope_scaling} is not written to GGUF; export without it")
    state = {k: v.detach().to(torch.float32).numpy() for k, v in language_model.state_dict().items()}
    embedding = state["model.embed_tokens.weight"]  # (V, D)
    tokens, types, merges = _tokenizer_vocab(tokenizer_json, embedding.shape[0])
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if head_dim * heads != config.hidden_size:
        raise GGUFExportError(f"head_dim {head_dim} x {heads} heads != hidden size {config.hidden_size}: llama.cpp's "
                              "qwen2 graph takes head_dim = hidden / heads")
    rope_theta = float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"])

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(str(partial), "qwen2")
    try:
        writer.add_name(name)
        writer.add_context_length(int(context_length or config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(heads)
        writer.add_head_count_kv(int(config.num_key_value_heads))
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if merges:
            writer.add_token_merges(merges)
        writer.add_eos_token_id(int(eos_token_id))
        writer.add_pad_token_id(int(pad_token_id))
        writer.add_add_bos_token(False)
        for name_, array in _gguf_tensors(state, int(config.num_hidden_layers), bool(config.tie_word_embeddings)):
            writer.add_tensor(name_, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, target)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return target


def _gguf_tensors(state: dict[str, np.ndarray], layers: int, tied: bool):
    """(GGUF name, array) pairs in llama.cpp's names; arrays as PyTorch lays them out, (out, in):
    GGUF stores the dimensions reversed, which is ggml's (in, out)."""
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(layers):
        prefix = f"model.layers.{i}."
        yield f"blk.{i}.attn_norm.weight", state[prefix + "input_layernorm.weight"]
        for ours, theirs in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
            yield f"blk.{i}.{theirs}.weight", state[f"{prefix}self_attn.{ours}.weight"]
            yield f"blk.{i}.{theirs}.bias", state[f"{prefix}self_attn.{ours}.bias"]
        yield f"blk.{i}.attn_output.weight", state[prefix + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", state[prefix + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", state[prefix + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", state[prefix + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", state[prefix + "mlp.down_proj.weight"]
    yield "output_norm.weight", state["model.norm.weight"]
    if not tied:
        yield "output.weight", state["lm_head.weight"]


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes of weights a decode step reads from ``path``: every tensor but the token embedding
    (one row of it is gathered), unless it doubles as the LM head (tied: no ``output.weight``)."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    skipped = tensors["token_embd.weight"] if "output.weight" in tensors else 0
    return sum(tensors.values()) - skipped


def quantize_gguf(source: Path, target: Path, gguf_type: str, threads: int | None = None) -> Path:
    """``source`` (F32 GGUF) quantized by llama.cpp's own quantizer (``llama_model_quantize``, as
    ``llama-quantize`` runs it: its default per-tensor choices, e.g. Q6_K for the LM head under
    Q4_K_M) to ``target``, through a temporary name."""
    if gguf_type not in GGUF_FILE_TYPES or gguf_type == "f32":
        raise GGUFExportError(f"unknown GGUF quantization {gguf_type!r}; one of "
                              f"{', '.join(t for t in GGUF_FILE_TYPES if t != 'f32')}")
    try:
        import llama_cpp
    except ImportError as err:
        raise GGUFExportError(f"quantizing GGUF needs llama-cpp-python ({err}); pip install 'eov-edge[bench]'") from err
    from eov_edge.runtime.llamacpp_decoder import quiet_llama_logs

    quiet_llama_logs(llama_cpp)
    target = Path(target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_FILE_TYPES[gguf_type]
    params.nthread = int(threads or os.cpu_count() or 1)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
        if status != 0 or not partial.is_file():
            raise GGUFExportError(f"llama.cpp could not quantize {source} to {gguf_type} (status {status})")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def gguf_file_name(gguf_type: str) -> str:
    return f"decoder-{gguf_type}.gguf"


def add_gguf_to_artifacts(directory: Path, gguf_type: str, checkpoint: Path | None = None, preset: str | None = None,
                          seed: int = 0, model_and_processor=None) -> dict:
    """Write the artifacts' decoder as ``decoder-<type>.gguf`` into ``directory`` and list it in the
    manifest (file, sha256, bytes read per decode step, llama.cpp version); the weights come from
    ``checkpoint`` / ``preset`` and must be the ones the artifacts were exported from (their
    ``weights_sha256``). Returns the manifest entry."""
    from eov_edge.core import manifest as mf
    from eov_edge.core.paths import write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.model.processor import load_model
    from eov_edge.model.weights import weights_sha256

    if gguf_type not in GGUF_FILE_TYPES:
        raise GGUFExportError(f"unknown GGUF type {gguf_type!r}; one of {', '.join(GGUF_FILE_TYPES)}")
    directory = Path(directory)
    manifest = mf.load_manifest(directory)
    model, processor = model_and_processor or load_model(checkpoint, preset, seed=seed)
    expected = manifest.produced_by.get("weights_sha256")
    actual = weights_sha256(model)
    if expected != actual:
        raise GGUFExportError(f"{directory} was exported from other weights ({manifest.produced_by.get('source')}); "
                              "give the checkpoint (or preset) it was exported from")
    target = directory / gguf_file_name(gguf_type)
    tokenizer = directory / manifest.tokenizer["file"]
    special = manifest.special_tokens
    f32 = target if gguf_type == "f32" else directory / f".{gguf_file_name('f32')}.{os.getpid()}.source"
    try:
        write_gguf(model.language_model, tokenizer, f32, eos_token_id=special["eos"], pad_token_id=special["pad"],
                   context_length=manifest.max_context)
        if gguf_type != "f32":
            quantize_gguf(f32, target, gguf_type)
    finally:
        if f32 != target:
            f32.unlink(missing_ok=True)
    entry = {"file": target.name, "sha256": mf.sha256_file(target), "type": gguf_type,
             "bytes_per_token": gguf_bytes_per_token(target), "weights_sha256": actual,
             "written_by": {"gguf": _version("gguf"), "llama_cpp_python": _version("llama-cpp-python"),
                            "git_commit": git_commit()}}
    data = json.loads((directory / mf.MANIFEST_FILE).read_text())
    data.setdefault("gguf", {})[gguf_type] = entry
    write_json_atomic(directory / mf.MANIFEST_FILE, data)
    return entry


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None: not installed, e.g. llama-cpp-python for F32 only)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
