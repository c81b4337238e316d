"""The decoder written to GGUF: llama.cpp reads our weights as its qwen2 architecture and computes
transformers' logits; its own quantizer makes the 8- and 4-bit files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eov_edge.bench.components import save_qwen2
from eov_edge.export.gguf_export import GGUFExportError, gguf_bytes_per_token, quantize_gguf, write_gguf


def _qwen2(tmp_path, tie: bool):
    from transformers import Qwen2ForCausalLM

    folder = save_qwen2(tmp_path / f"qwen2-tie{int(tie)}", tie=tie, rows=512, tokens=480)
    return Qwen2ForCausalLM.from_pretrained(folder).eval(), folder / "tokenizer.json"


def _llama_logits(llama_cpp, path, ids: list[int]) -> np.ndarray:
    """llama.cpp's F32 logits (S, V) for ``ids``, F32 KV cache, flash attention off."""
    from eov_edge.runtime.llamacpp_decoder import quiet_llama_logs

    lc = llama_cpp
    quiet_llama_logs(lc)
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    assert model, "llama.cpp refused the GGUF"
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 64, 64, 64
    params.type_k = params.type_v = lc.GGML_TYPE_F32
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    context = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(len(ids), 0, 1)
    batch.n_tokens = len(ids)
    for i, token in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
        batch.seq_id[i][0] = 0
    assert lc.llama_decode(context, batch) == 0
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    logits = np.array([np.ctypeslib.as_array(lc.llama_get_logits_ith(context, i), shape=(vocab,)) for i in range(len(ids))])
    lc.llama_batch_free(batch)
    lc.llama_free(context)
    lc.llama_model_free(model)
    return logits


def test_gguf_holds_qwen2_metadata_tensors_and_tokenizer(tmp_path):
    gguf = pytest.importorskip("gguf")
    model, tokenizer_json = _qwen2(tmp_path, tie=False)
    target = write_gguf(model, tokenizer_json, tmp_path / "d.gguf", eos_token_id=480, pad_token_id=480,
                        context_length=256)
    reader = gguf.GGUFReader(str(target))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.architecture"] == "qwen2"
    assert fields["qwen2.block_count"] == 4 and fields["qwen2.embedding_length"] == 64
    assert fields["qwen2.attention.head_count"] == 4 and fields["qwen2.attention.head_count_kv"] == 2
    assert fields["qwen2.context_length"] == 256
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.eos_token_id"] == 480
    tokens = fields["tokenizer.ggml.tokens"]
    data = json.loads(tokenizer_json.read_text())
    assert len(tokens) == 512  # the embedding's rows: the tokenizer's 483, then padding
    assert tokens[data["model"]["vocab"]["a"]] == "a" and tokens[500] == "[PAD500]"
    types = fields["tokenizer.ggml.token_type"]
    assert types[480] == gguf.TokenType.CONTROL and types[500] == gguf.TokenType.UNUSED
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 1 + 4 * 12 + 2  # embedding, 12 per layer, final norm, LM head
    # GGUF lists ggml's dimensions: (in, out)
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]
    np.testing.assert_array_equal(tensors["blk.1.attn_q.bias"].data, model.model.layers[1].self_attn.q_proj.bias
                                  .detach().numpy())
    assert gguf_bytes_per_token(target) == sum(int(t.n_bytes) for t in reader.tensors) - 512 * 64 * 4
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".gguf" or "partial" in p.name] == ["d.gguf"]


def test_a_tokenizer_of_another_model_is_refused(tmp_path):
    pytest.importorskip("gguf")
    model, _ = _qwen2(tmp_path, tie=True)
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 600}, "merges": []}}))
    with pytest.raises(GGUFExportError, match="not this model's"):
        write_gguf(model, wide, tmp_path / "x.gguf", eos_token_id=0, pad_token_id=0)
    assert not list(tmp_path.glob("*x.gguf*"))  # nothing half-written left


@pytest.mark.parametrize("tie", [False, True])
def test_llama_cpp_computes_transformers_logits_from_our_gguf(tmp_path, llama_cpp, tie):
    model, tokenizer_json = _qwen2(tmp_path, tie=tie)  # norms and q/k/v biases perturbed
    target = write_gguf(model, tokenizer_json, tmp_path / "d.gguf", eos_token_id=480, pad_token_id=480)
    ids = np.random.default_rng(0).integers(0, 480, 40).tolist()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()  # (S, V)
    got = _llama_logits(llama_cpp, target, ids)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-4 * np.abs(expected).max())
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_llama_cpp_quantizes_our_gguf(tmp_path, llama_cpp):
    import gguf

    model, tokenizer_json = _qwen2(tmp_path, tie=False)
    f32 = write_gguf(model, tokenizer_json, tmp_path / "d.gguf", eos_token_id=480, pad_token_id=480)
    q8 = quantize_gguf(f32, tmp_path / "d-q8_0.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(q8)).tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert gguf_bytes_per_token(q8) < gguf_bytes_per_token(f32) / 3
    # the quantized model still predicts as the F32 one on most positions
    ids = np.random.default_rng(1).integers(0, 480, 40).tolist()
    agree = (_llama_logits(llama_cpp, q8, ids).argmax(-1) == _llama_logits(llama_cpp, f32, ids).argmax(-1)).mean()
    assert agree >= 0.8
    with pytest.raises(GGUFExportError, match="unknown GGUF quantization"):
        quantize_gguf(f32, tmp_path / "x.gguf", "q3_k")
    assert sorted(p.name for p in tmp_path.glob("*.gguf*")) == ["d-q8_0.gguf", "d.gguf"]


def test_eov_export_gguf_adds_the_decoder_to_the_artifacts_it_was_exported_from(nano_fused_artifacts, tmp_path,
                                                                                llama_cpp):
    import shutil

    from click.testing import CliRunner

    from eov_edge.cli import export_main
    from eov_edge.core import manifest as mf

    folder = tmp_path / "nano"
    shutil.copytree(nano_fused_artifacts, folder)
    refused = CliRunner().invoke(export_main, ["gguf", "--artifacts", str(folder), "--preset", "small"])
    assert refused.exit_code != 0 and "exported from other weights" in refused.output
    assert not list(folder.glob("*.gguf*"))
    done = CliRunner().invoke(export_main, ["gguf", "--artifacts", str(folder), "--type", "q4_0"])
    assert done.exit_code == 0, done.output
    manifest = mf.load_manifest(folder)  # the GGUF is listed with its sha256, and checked
    entry = manifest.gguf["q4_0"]
    assert entry["file"] == "decoder-q4_0.gguf" and entry["written_by"]["llama_cpp_python"]
    assert entry["weights_sha256"] == manifest.produced_by["weights_sha256"]
    assert sorted(p.name for p in folder.glob("*gguf*")) == ["decoder-q4_0.gguf"]  # no F32 source left
    (folder / "decoder-q4_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(mf.ManifestError, match="sha256"):
        mf.load_manifest(folder)
