"""Decode steps on llama.cpp (--decoder-backend llamacpp): the GGUF written from the artifacts'
weights answers as the ONNX Runtime decoder does, with the prompt handed over from ONNX Runtime or
run by llama.cpp; the handoff writes llama.cpp's own cache-state format."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from eov_edge.runtime.llamacpp_decoder import LlamaCppError, parse_sequence_state, sequence_state

HEADER = b"\x01\x02\x03\x04\x00\x00\x00\x00"


@pytest.mark.parametrize("v_trans", [True, False])
@pytest.mark.parametrize("k_type,v_type", [(0, 0), (1, 1)])
def test_sequence_state_round_trips(v_trans, k_type, v_type):
    rng = np.random.default_rng(0)
    keys = [rng.standard_normal((2, 5, 4), dtype=np.float32) for _ in range(3)]  # (KV, P, hd) per layer
    values = [rng.standard_normal((2, 5, 4), dtype=np.float32) for _ in range(3)]
    state = sequence_state(HEADER, keys, values, v_trans, k_type, v_type)
    header, k2, v2, t2, kt, vt = parse_sequence_state(state, 3, 2, 4)
    assert (header, t2, kt, vt) == (HEADER, v_trans, k_type, v_type)
    tolerance = 0 if k_type == 0 else 1e-3
    for a, b in zip(keys + values, k2 + v2):
        np.testing.assert_allclose(b, a, atol=tolerance * 4, rtol=tolerance)
    with pytest.raises(ValueError, match="layers"):
        parse_sequence_state(state, 4, 2, 4)
    with pytest.raises(ValueError, match="ends early"):
        parse_sequence_state(state[:-3], 3, 2, 4)


@pytest.fixture(scope="module")
def gguf_artifacts(nano_fused_artifacts, shipped, tmp_path_factory, llama_cpp):
    """A copy of the fused nano artifacts with F32 and Q8_0 GGUF decoders (eov-export gguf)."""
    from eov_edge.export.gguf_export import add_gguf_to_artifacts

    folder = tmp_path_factory.mktemp("gguf") / "nano"
    shutil.copytree(nano_fused_artifacts, folder)
    for gguf_type in ("f32", "q8_0"):
        add_gguf_to_artifacts(folder, gguf_type, model_and_processor=shipped)
    return folder


def _answers(pipe, samples, **generation):
    from eov_edge.runtime.generation import GenerationConfig

    config = GenerationConfig(**generation) if generation else None
    return [pipe.answer(s.views, prompt=s.instruction, generation=config)[0] for s in samples]


@pytest.fixture(scope="module")
def samples():
    from eov_edge.bench.measure import bench_samples

    return bench_samples(224, 6)


@pytest.mark.parametrize("prefill", ["onnxruntime", "llamacpp"])
def test_llamacpp_decode_answers_as_onnxruntime(gguf_artifacts, samples, prefill):
    from eov_edge.runtime.pipeline import Pipeline

    reference = _answers(Pipeline.from_artifacts(gguf_artifacts), samples)
    with Pipeline.from_artifacts(gguf_artifacts, decoder_backend="llamacpp", prefill=prefill) as pipe:
        assert pipe.decoder.llama is not None
        answers = _answers(pipe, samples)
        # a longer answer: EOS suppressed for 24 tokens, so the rule overrides llama.cpp's argmax
        long_reference = _answers(Pipeline.from_artifacts(gguf_artifacts), samples[:2], max_new_tokens=24,
                                  min_new_tokens=24)
        long = _answers(pipe, samples[:2], max_new_tokens=24, min_new_tokens=24)
    for ours, theirs in zip(answers + long, reference + long_reference):
        assert ours.token_ids == theirs.token_ids and ours.text == theirs.text
        np.testing.assert_allclose(ours.token_probs, theirs.token_probs, atol=1e-4)
    assert all(len(a.token_ids) == 24 for a in long)


def test_batches_and_shared_prefixes_stay_on_onnxruntime(gguf_artifacts, samples):
    from eov_edge.runtime.pipeline import Pipeline

    questions = [(None, "What is in the image?"), ("classification", None), ("caption", None)]
    expected = Pipeline.from_artifacts(gguf_artifacts).answer_questions(samples[0].views, questions)
    with Pipeline.from_artifacts(gguf_artifacts, decoder_backend="llamacpp") as pipe:
        got = pipe.answer_questions(samples[0].views, questions)
        steps_before = len(pipe.runners["decoder"].timings)
        pipe.answer(samples[1].views, prompt=samples[1].instruction)
        assert len(pipe.runners["decoder"].timings) == steps_before + 1  # the prompt only: steps on llama.cpp
    assert [a.token_ids for a in got] == [a.token_ids for a in expected]


def test_a_q8_0_decoder_answers(gguf_artifacts, samples):
    from eov_edge.runtime.pipeline import Pipeline

    reference = _answers(Pipeline.from_artifacts(gguf_artifacts), samples)
    with Pipeline.from_artifacts(gguf_artifacts, decoder_backend="llamacpp", gguf="q8_0") as pipe:
        answers = _answers(pipe, samples)
    assert all(a.text for a in answers)
    # not the same numbers, but the trained nano's short answers mostly survive 8-bit weights
    assert sum(a.token_ids == b.token_ids for a, b in zip(answers, reference)) >= len(samples) // 2


def test_missing_or_foreign_gguf_is_refused_with_what_to_do(gguf_artifacts, nano_fused_artifacts, nano_artifacts,
                                                             tmp_path, llama_cpp):
    from eov_edge.core import manifest as mf
    from eov_edge.runtime.pipeline import Pipeline

    with pytest.raises(LlamaCppError, match="eov-export gguf"):
        Pipeline.from_artifacts(nano_fused_artifacts, decoder_backend="llamacpp")
    with pytest.raises(LlamaCppError, match="--type q4_0"):
        Pipeline.from_artifacts(gguf_artifacts, decoder_backend="llamacpp", gguf="q4_0")
    # a GGUF of another model listed under this folder's name
    foreign = tmp_path / "nano"
    shutil.copytree(gguf_artifacts, foreign)
    from transformers import Qwen2ForCausalLM

    from eov_edge.bench.components import save_qwen2
    from eov_edge.export.gguf_export import write_gguf

    other = Qwen2ForCausalLM.from_pretrained(save_qwen2(tmp_path / "q", rows=3104, tokens=480))
    write_gguf(other, foreign / "tokenizer.json", foreign / "decoder-f32.gguf", eos_token_id=1, pad_token_id=0)
    data = json.loads((foreign / mf.MANIFEST_FILE).read_text())
    data["gguf"]["f32"]["sha256"] = mf.sha256_file(foreign / "decoder-f32.gguf")
    (foreign / mf.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(LlamaCppError, match="another model"):
        Pipeline.from_artifacts(foreign, decoder_backend="llamacpp")
    # the handoff needs the fused CPU decoder's shared KV buffers
    portable = tmp_path / "portable"
    shutil.copytree(nano_artifacts, portable)
    data = json.loads((portable / mf.MANIFEST_FILE).read_text())
    data["gguf"] = json.loads((gguf_artifacts / mf.MANIFEST_FILE).read_text())["gguf"]
    shutil.copy(gguf_artifacts / "decoder-f32.gguf", portable)
    shutil.copy(gguf_artifacts / "decoder-q8_0.gguf", portable)
    (portable / mf.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(LlamaCppError, match="--prefill llamacpp"):
        Pipeline.from_artifacts(portable, decoder_backend="llamacpp", prefill="onnxruntime")
    with Pipeline.from_artifacts(portable, decoder_backend="llamacpp") as pipe:  # default: llama.cpp's prompt
        assert pipe.decoder.llama_prefill == "llamacpp"
    with Pipeline.from_artifacts(gguf_artifacts, decoder_backend="llamacpp") as pipe:  # fused: the handoff
        assert pipe.decoder.llama_prefill == "onnxruntime"
