"""--decoder ort-cpu: ONNX Runtime's fused decoder, same function as the portable graph, shared KV buffer."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from eov_edge.core import manifest as mf
from eov_edge.core.calib import calib_questions
from eov_edge.core.errors import EngineError
from eov_edge.export.devices import get_device
from eov_edge.export.engine_plan import make_plan
from eov_edge.export.ort_decoder import empty_cache, prompt_feed
from eov_edge.quantize.build import QuantizeError, write_ungated
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.pipeline import Pipeline

pytestmark = pytest.mark.slow


def test_fused_graph_contract_and_validation(nano_fused_artifacts):
    manifest = mf.load_manifest(nano_fused_artifacts)
    assert manifest.decoder_kind == mf.ORT_CPU_DECODER
    decoder = manifest.graphs[mf.DECODER]
    layers = manifest.num_layers
    assert [t.name for t in decoder.inputs] == [mf.INPUTS_EMBEDS, mf.INPUT_IDS, mf.EMBED_TABLE, mf.SEQLENS_K,
                                                mf.TOTAL_SEQUENCE_LENGTH, mf.LOGITS_INDEX, *mf.past_names(layers)]
    spec = {t.name: t for t in decoder.inputs + decoder.outputs}
    assert spec[mf.TOTAL_SEQUENCE_LENGTH].shape == [] and spec[mf.SEQLENS_K].dtype == "int32"
    assert spec[mf.LOGITS_INDEX].dtype == "int64" and spec[mf.LOGITS].shape[1] == spec[mf.LOGITS_INDEX].shape[0]
    assert spec[mf.INPUT_IDS].dtype == spec[mf.NEXT_TOKENS].dtype == "int64"
    # the runtime's table, bound as it is: the manifest's shape and dtype
    assert spec[mf.EMBED_TABLE].shape == manifest.embedding["shape"]
    assert spec[mf.EMBED_TABLE].dtype == manifest.embedding["dtype"] == "float32"
    # one argmax per logits row; past and present: one buffer
    assert spec[mf.NEXT_TOKENS].shape == spec[mf.LOGITS].shape[:2]
    assert spec["past.0.key"].shape == spec["present.0.key"].shape
    assert [t.name for t in decoder.outputs] == [mf.LOGITS, mf.NEXT_TOKENS, *mf.present_names(layers)]
    ops = collections.Counter(n.op_type for n in onnx.load(str(nano_fused_artifacts / decoder.file)).graph.node)
    assert ops["GroupQueryAttention"] == layers and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert ops["MatMul"] == 5 * layers + 1  # qkv, o, gate, up, down per layer; the LM head
    assert ops["ArgMax"] == 1 and ops["Gather"] == 2  # next_tokens; the table rows and the logits positions
    # export validated it: against transformers' forward (prefill, then decode steps writing the
    # shared cache) and token for token with generate() on every calib sample, alone and batched
    validation = manifest.validation
    shared = [g for g in validation["graphs"] if g["output"] == "present (shared cache)"]
    assert len(shared) == 4 and all(g["max_abs"] < 1e-4 for g in shared)
    # the decode steps were fed token ids (the graph gathered their rows), and next_tokens was each
    # call's argmax
    by_id = [g for g in validation["graphs"] if g["case"].endswith("(token id)") and g["output"] == mf.LOGITS]
    assert len(by_id) == 3 and all(g["max_abs"] < 1e-4 for g in by_id)
    argmax = [g for g in validation["graphs"] if g["output"].startswith(mf.NEXT_TOKENS)]
    assert len(argmax) == 4 and all(g["max_abs"] == 0 and g["ort_optimizer_max_abs"] == 0 for g in argmax)
    assert validation["summary"]["token_identical"] == "20/20"


def test_fused_encoder_has_onnx_runtimes_vit_kernels_and_the_portable_encoders_output(nano_fused_artifacts,
                                                                                        nano_artifacts):
    """--decoder ort-cpu also runs the encoder through ONNX Runtime's optimizer: one Attention and
    FastGelu per layer (no decomposed softmax or tanh GELU left), its SkipLayerNormalizations split
    back into Add + LayerNormalization (every LayerNorm of the portable graph is there), the same
    features as the portable encoder, and the export's validation against PyTorch passed."""
    import onnxruntime as ort

    manifest = mf.load_manifest(nano_fused_artifacts)
    layers = manifest.model_config["vision_config"]["num_hidden_layers"]
    fused_file = nano_fused_artifacts / manifest.graphs[mf.ENCODER].file
    portable_file = nano_artifacts / mf.load_manifest(nano_artifacts).graphs[mf.ENCODER].file
    ops = collections.Counter(n.op_type for n in onnx.load(str(fused_file)).graph.node)
    portable_ops = collections.Counter(n.op_type for n in onnx.load(str(portable_file)).graph.node)
    assert ops["Attention"] == layers and ops["FastGelu"] == layers
    assert ops["SkipLayerNormalization"] == 0
    assert ops["LayerNormalization"] == portable_ops["LayerNormalization"] >= 2 * layers
    assert ops["Softmax"] == ops["Tanh"] == 0
    sessions = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in (fused_file, portable_file)]
    with Pipeline.from_artifacts(nano_artifacts) as pipe:  # thermal frames and a Sentinel-2 pair
        batch = pipe.batch([s for _, s in calib_questions(manifest.image_size)[6:9]], 1)
    feed = {mf.PIXEL_VALUES: batch[mf.PIXEL_VALUES], mf.MODALITY_IDS: batch[mf.MODALITY_IDS]}
    assert len(feed[mf.PIXEL_VALUES]) == 4
    fused, portable = (session.run(None, feed)[0] for session in sessions)
    np.testing.assert_allclose(fused, portable, atol=1e-4, rtol=0)
    encoder_checks = [g for g in manifest.validation["graphs"] if g["graph"] == mf.ENCODER]
    assert encoder_checks and all(max(g["max_abs"], g["ort_optimizer_max_abs"]) <= g["atol"] for g in encoder_checks)


def test_fused_and_portable_runtimes_give_the_same_tokens_and_probabilities(nano_fused_artifacts, nano_artifacts):
    fused, portable = Pipeline.from_artifacts(nano_fused_artifacts), Pipeline.from_artifacts(nano_artifacts)
    samples = [s for _, s in calib_questions(fused.spec.image_size)][:4]  # prompts of different lengths
    config = GenerationConfig(max_new_tokens=12, min_new_tokens=12)  # every step runs, rows never stop
    batch = fused.batch(samples, 12)
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1
    ids_f, probs_f = fused.generate_ids(batch, config)
    ids_p, probs_p = portable.generate_ids(portable.batch(samples, 12), config)
    assert ids_f.tolist() == ids_p.tolist()
    np.testing.assert_allclose(probs_f, probs_p, atol=1e-4)
    assert fused.stats()["kv_cache_mb"] > 0


def test_fused_decoder_is_for_onnx_runtime_only(nano_fused_artifacts, tmp_path):
    with pytest.raises(EngineError, match="--decoder portable"):
        make_plan(nano_fused_artifacts, get_device("orin-nano"))
    with pytest.raises(QuantizeError, match="--decoder portable"):
        write_ungated(nano_fused_artifacts, "w4a16", tmp_path / "w4a16")
    assert not (tmp_path / "w4a16").exists()


def test_cpu_recipes_quantize_the_fused_decoder(nano_fused_artifacts, tmp_path):
    out = write_ungated(nano_fused_artifacts, "ort-cpu-int4", tmp_path / "int4")
    graph = onnx.load(str(out / "decoder.onnx"))
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    layers = mf.load_manifest(out).num_layers
    assert ops["MatMulNBits"] == 5 * layers + 1 and ops["GroupQueryAttention"] == layers
    # the table is stored in float16: the graph's embed_table input (and its manifest spec) says so
    manifest = mf.load_manifest(out)
    table_input = next(i for i in graph.graph.input if i.name == mf.EMBED_TABLE)
    assert table_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert np.load(out / mf.EMBEDDING_FILE).dtype == np.dtype(manifest.embedding["dtype"]) == np.float16
    assert next(t for t in manifest.graphs[mf.DECODER].inputs if t.name == mf.EMBED_TABLE).dtype == "float16"
    pipe = Pipeline.from_artifacts(out)
    samples = [s for _, s in calib_questions(pipe.spec.image_size)][:2]
    ids, probs = pipe.generate_ids(pipe.batch(samples, 8), GenerationConfig(max_new_tokens=8))
    assert ids.shape[0] == 2 and np.all((probs > 0) & (probs <= 1))


def test_int4_prompts_run_in_a_second_session_with_the_fp32_kernel(nano_fused_artifacts, tmp_path):
    """ort-cpu-int4 asks for a prefill session (mlas.qnbit.force_fp32): the runtime runs each prompt
    there and the decode steps in the default (int8-compute) session; the first token's probability
    is the fp32 kernel's, not the int8 kernel's. prefill_session=False keeps one session."""
    import onnxruntime as ort

    from eov_edge.runtime.pipeline import PREFILL

    out = write_ungated(nano_fused_artifacts, "ort-cpu-int4", tmp_path / "int4")
    manifest = mf.load_manifest(out)
    assert manifest.prefill_session_config() == {"mlas.qnbit.force_fp32": "1"}
    width, length = manifest.model_config["text_config"]["hidden_size"], 20
    prompt = np.random.default_rng(0).standard_normal((1, length, width)).astype(np.float32) * 0.05
    mask = np.ones((1, length), np.int64)

    def first_token(pipe, new_tokens=1):
        steps = list(pipe.decoder.steps(prompt, mask, GenerationConfig(max_new_tokens=new_tokens,
                                                                       min_new_tokens=new_tokens, slis_grammar=False)))
        return int(steps[0].token_ids[0]), float(steps[0].probs[0]), len(steps)

    def standalone_probability(token, config_entries):
        options = ort.SessionOptions()
        for key, value in config_entries.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(out / "decoder.onnx"), options, providers=["CPUExecutionProvider"])
        feed = prompt_feed(out, manifest, prompt, 0, np.array([-1], np.int64), empty_cache(manifest, length))
        logits = session.run([mf.LOGITS], feed)[0][0, -1].astype(np.float64)
        logits[manifest.special_tokens["eos"]] = -np.inf  # as the loop does before min_new_tokens
        return float(np.exp(logits[token] - logits.max()) / np.exp(logits - logits.max()).sum())

    two = Pipeline.from_artifacts(out, prefill_session=True)  # the prefill session, not measured against the other
    assert PREFILL in two.runners and two.prompt_session is None
    token, probability, steps = first_token(two, new_tokens=6)
    assert steps == 6 and len(two.runners[PREFILL].timings) == 1 and len(two.runners[mf.DECODER].timings) == 5
    fp32_kernel = standalone_probability(token, {"mlas.qnbit.force_fp32": "1"})
    int8_kernel = standalone_probability(token, {})
    assert fp32_kernel != pytest.approx(int8_kernel, rel=1e-6, abs=0)  # the two kernels differ here
    assert probability == pytest.approx(fp32_kernel, rel=1e-5, abs=0)
    one = Pipeline.from_artifacts(out, prefill_session=False)
    assert PREFILL not in one.runners
    assert first_token(one)[1] == pytest.approx(int8_kernel, rel=1e-5, abs=0)


def test_dynamic_int8_quantizes_the_fused_decoder(nano_fused_artifacts, tmp_path):
    out = write_ungated(nano_fused_artifacts, "ort-cpu-int8", tmp_path / "int8")
    ops = collections.Counter(n.op_type for n in onnx.load(str(out / "decoder.onnx")).graph.node)
    layers = mf.load_manifest(out).num_layers
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] >= 5 * layers + 1
    assert ops["GroupQueryAttention"] == layers
    pipe = Pipeline.from_artifacts(out)
    samples = [s for _, s in calib_questions(pipe.spec.image_size)][:2]
    ids, probs = pipe.generate_ids(pipe.batch(samples, 8), GenerationConfig(max_new_tokens=8))
    assert ids.shape[0] == 2 and np.all((probs > 0) & (probs <= 1))


def test_the_runtime_keeps_the_faster_prompt_session_where_the_manifest_lets_it(nano_fused_artifacts, tmp_path):
    """Ungated INT4 artifacts claim no accuracy: their manifest lets the runtime run prompts with the
    faster of the two kernels, measured at start-up on the decoder's weight shapes (which one wins
    depends on the CPU). The loser's session is never made; the answers then are those of the
    session kept. A manifest that fixes the kernel, or an explicit prefill_session, is not measured."""
    from eov_edge.runtime.pipeline import PREFILL
    from eov_edge.runtime.prompt_kernel import decoder_matmul_shapes

    out = write_ungated(nano_fused_artifacts, "ort-cpu-int4", tmp_path / "int4")
    manifest = mf.load_manifest(out)
    assert manifest.prompt_kernel_choice() == mf.PROMPT_KERNEL_FASTEST
    # the choice is measured on the decoder's own weight shapes (the LM head aside: one position a prompt)
    vocab = len(np.load(out / manifest.embedding["file"], mmap_mode="r"))
    attributes = [{a.name: a.i for a in n.attribute} for n in onnx.load(str(out / "decoder.onnx")).graph.node
                  if n.op_type == "MatMulNBits"]
    assert decoder_matmul_shapes(manifest) == collections.Counter((a["K"], a["N"]) for a in attributes
                                                                  if a["N"] != vocab)
    pipe = Pipeline.from_artifacts(out)
    chosen = pipe.prompt_session
    assert set(chosen["ms"]) == {PREFILL, mf.DECODER} and all(ms > 0 for ms in chosen["ms"].values())
    assert chosen["chosen"] == min(chosen["ms"], key=chosen["ms"].get)
    assert (PREFILL in pipe.runners) == (chosen["chosen"] == PREFILL)
    assert (pipe.decoder.prefill_runner is pipe.runners[mf.DECODER]) == (chosen["chosen"] == mf.DECODER)
    assert pipe.stats()["prompt_session"] == chosen
    assert all(not runner.timings for runner in pipe.runners.values())  # the measurement is not the caller's
    samples = [s for _, s in calib_questions(pipe.spec.image_size)][:2]
    kept = Pipeline.from_artifacts(out, prefill_session=chosen["chosen"] == PREFILL)
    assert kept.prompt_session is None
    config = GenerationConfig(max_new_tokens=8)
    for a, b in zip(pipe.generate_ids(pipe.batch(samples, 8), config), kept.generate_ids(kept.batch(samples, 8), config)):
        np.testing.assert_array_equal(a, b)
    # a manifest that fixes the kernel (a gate that accepted the prefill session's only): not measured
    manifest.quantization["graphs"][mf.DECODER][mf.PROMPT_KERNEL_CHOICE] = mf.PROMPT_KERNEL_FIXED
    (out / mf.MANIFEST_FILE).write_text(manifest.to_json())
    fixed = Pipeline.from_artifacts(out)
    assert fixed.prompt_session is None and PREFILL in fixed.runners


def test_the_int4_gate_measures_prompts_in_both_sessions(nano_fused_artifacts, tmp_path, monkeypatch):
    """The gate accepts INT4 artifacts with prompts in the prefill session, then gates them again
    with prompts in the decode session; the manifest lets the runtime choose only if that holds
    the budget too (a loose budget here; then a decode-session pass made to break a task)."""
    from eov_edge.quantize import build, gate

    report = build.quantize_artifacts(nano_fused_artifacts, "ort-cpu-int4", tmp_path / "loose", per_task=2,
                                      max_drop=100.0, progress=lambda m: None)
    other = report["gate"]["prompts_in_decode_session"]
    assert other["accepted"] and other["rows"] and set(other["changed_answers"]) <= set(
        r["task"] for r in other["rows"])
    assert mf.load_manifest(tmp_path / "loose").prompt_kernel_choice() == mf.PROMPT_KERNEL_FASTEST
    assert "Prompts in the decode session" in (tmp_path / "loose" / "quant_report.md").read_text()
    # the same, with the decode-session pass breaking a task: prompts stay in the prefill session
    answer_examples, broken_tasks, second_pass = gate.answer_examples, gate.broken_tasks, []

    def answers(*args, prefill_session=True, **kwargs):
        second_pass.append(not prefill_session)
        return answer_examples(*args, prefill_session=prefill_session, **kwargs)

    monkeypatch.setattr(gate, "answer_examples", answers)
    monkeypatch.setattr(gate, "broken_tasks", lambda rows: ["caption"] if second_pass[-1] else broken_tasks(rows))
    report = build.quantize_artifacts(nano_fused_artifacts, "ort-cpu-int4", tmp_path / "strict", per_task=2,
                                      max_drop=100.0, progress=lambda m: None)
    assert second_pass[-1] and not report["gate"]["prompts_in_decode_session"]["accepted"]
    fixed = mf.load_manifest(tmp_path / "strict")
    assert fixed.prompt_kernel_choice() == mf.PROMPT_KERNEL_FIXED and fixed.prefill_session_config()


@pytest.mark.parametrize("block, exact", [(32, True), (128, False)])
def test_int4_artifacts_say_whether_their_rows_are_exact_in_company(block, exact, nano_fused_artifacts, tmp_path):
    """Blocks of 32 (the default): the decode session's kernel gives each row of a call the result
    it gets alone, the fact prefix sharing and batching rest on; the manifest says so. Larger blocks
    are marked batch-variant, so the runtime decodes their answers alone."""
    import onnxruntime as ort

    out = write_ungated(nano_fused_artifacts, "ort-cpu-int4", tmp_path / f"int4-b{block}", int4_block_size=block)
    manifest = mf.load_manifest(out)
    assert manifest.quantization["graphs"][mf.DECODER]["rows_exact"] is exact
    assert manifest.batch_invariant is exact
    if exact:
        width, length = manifest.model_config["text_config"]["hidden_size"], 12
        prompt = np.random.default_rng(1).standard_normal((1, length, width)).astype(np.float32) * 0.05
        session = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
        presents = [mf.LOGITS, *mf.present_names(manifest.num_layers)]

        def logits(cache, start, end):  # positions start..end-1 fed on a cache holding 0..start-1
            result = session.run(presents, prompt_feed(out, manifest, prompt[:, start:end], start,
                                                       np.arange(end - start, dtype=np.int64), cache))
            cache.update(zip(cache, result[1:]))
            return result[0][0]

        whole = logits(empty_cache(manifest, length), 0, length)
        cache = empty_cache(manifest, length)
        parts = np.concatenate([logits(cache, 0, 5), logits(cache, 5, length)])
        np.testing.assert_array_equal(parts, whole)
