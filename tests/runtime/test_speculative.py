"""Speculative decoding: a quantized draft proposes, the FP32 decoder checks; the answer is the FP32 loop's."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from eov_edge.core import manifest as mf
from eov_edge.core.calib import calib_questions
from eov_edge.quantize.build import write_ungated
from eov_edge.runtime.generation import Decoder, GenerationConfig
from eov_edge.runtime.ort_runner import OrtRunner
from eov_edge.runtime.pipeline import DRAFT, Pipeline
from eov_edge.runtime.speculative import SpeculativeDecoder, SpeculativeError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_draft(nano_fused_artifacts, tmp_path_factory):
    return write_ungated(nano_fused_artifacts, "ort-cpu-int8", tmp_path_factory.mktemp("draft") / "int8")


@pytest.fixture(scope="module")
def plain(nano_fused_artifacts):
    return Pipeline.from_artifacts(nano_fused_artifacts, threads=1)


@pytest.fixture(scope="module")
def samples(plain):
    return calib_questions(plain.spec.image_size)  # every task kind, detection answers included


def other_weights_draft(pipe: Pipeline, seed: int = 0) -> Decoder:
    """A draft that mostly proposes wrong tokens: the same graph reading a perturbed embedding table."""
    entry = pipe.manifest.graphs[mf.DECODER]
    runner = OrtRunner(DRAFT, pipe.directory / entry.file, entry, threads=1)
    noise = np.random.default_rng(seed).standard_normal(pipe.embed_table.shape).astype(np.float32)
    table = pipe.embed_table + noise * pipe.embed_table.std()
    return Decoder(runner, table, pipe.manifest)


def answers(pipe, samples, config):
    out = []
    for _, sample in samples:
        ids, probs = pipe.generate_ids(pipe.batch([sample], config.max_new_tokens), config)
        out.append((ids, probs, pipe.decoder.last_stats if isinstance(pipe.decoder, SpeculativeDecoder) else None))
    return out


def test_answers_are_the_fp32_loops_with_fewer_fp32_calls(nano_fused_artifacts, int8_draft, plain, samples):
    speculative = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, draft=int8_draft, draft_tokens=4)
    config = GenerationConfig(max_new_tokens=48)
    target = speculative.runners[mf.DECODER]
    target.timings.clear()
    produced = 0
    for (ids, probs, _), (ids_s, probs_s, stats) in zip(answers(plain, samples, config),
                                                        answers(speculative, samples, config)):
        assert ids_s.tolist() == ids.tolist()
        np.testing.assert_allclose(probs_s, probs, atol=1e-5, rtol=0)  # same rule, FP32 logits
        assert stats.rounds >= 1 and 0 <= stats.accepted <= stats.drafted
        produced += ids.shape[1]
    calls = len(target.timings)  # a prefill per sample, then one check per round
    assert calls < produced, (calls, produced)
    report = speculative.stats()["speculative"]
    assert report["draft_tokens"] == 4 and report["rounds"] >= 1
    assert speculative.stats()["graphs"][DRAFT]["calls"] > 0


def test_a_draft_identical_to_the_model_has_every_proposal_kept(nano_fused_artifacts, plain, samples):
    """The bookkeeping: with the FP32 decoder as its own draft every proposal is kept (the final EOS
    included), so the FP32 decoder runs once per draft_tokens + 1 tokens after the prefill."""
    speculative = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, draft=nano_fused_artifacts, draft_tokens=3)
    chosen = [s for s in samples if s[0].startswith(("landsat", "ucmerced", "bigearthnet_s1"))]
    config = GenerationConfig(max_new_tokens=48)
    for (ids, _, _), (ids_s, _, stats) in zip(answers(plain, chosen, config), answers(speculative, chosen, config)):
        assert ids_s.tolist() == ids.tolist()
        assert stats.drafted > 0 and stats.accepted == stats.drafted, stats
        assert stats.rounds == -(-(ids.shape[1] - 1) // 4)  # ceil((tokens after the first) / (3 + 1))


def test_a_draft_that_keeps_missing_still_gives_the_fp32_answer(plain, samples):
    """Rejections everywhere (a wrong draft): rollback of both caches, the correction token, the
    grammar inside boxes, EOS masked until min_new_tokens; the tokens still equal the plain loop's."""
    speculative = Pipeline.from_artifacts(plain.directory, threads=1)
    speculative.decoder = SpeculativeDecoder(speculative.decoder, other_weights_draft(speculative), draft_tokens=3)
    chosen = [s for s in samples if s[0].startswith(("hit_uav_1", "landsat", "ucmerced"))]
    assert len(chosen) == 3
    drafted = accepted = 0
    for config in (GenerationConfig(max_new_tokens=40), GenerationConfig(max_new_tokens=12, min_new_tokens=12)):
        for (ids, probs, _), (ids_s, probs_s, stats) in zip(answers(plain, chosen, config),
                                                            answers(speculative, chosen, config)):
            assert ids_s.tolist() == ids.tolist()
            np.testing.assert_allclose(probs_s, probs, atol=1e-5, rtol=0)
            drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert drafted > 0 and accepted / drafted < 0.5  # the draft really missed


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3])
def test_the_token_limit_holds_at_every_round_boundary(nano_fused_artifacts, int8_draft, plain, samples,
                                                       max_new_tokens):
    speculative = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, draft=int8_draft, draft_tokens=4)
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    chosen = samples[:2]
    for (ids, probs, _), (ids_s, probs_s, _) in zip(answers(plain, chosen, config), answers(speculative, chosen, config)):
        assert ids_s.shape == ids.shape == (1, max_new_tokens)
        assert ids_s.tolist() == ids.tolist()


def test_batches_and_sampling_take_the_plain_loop(nano_fused_artifacts, int8_draft, plain, samples):
    speculative = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, draft=int8_draft)
    batch = [s for _, s in samples[:3]]
    greedy = GenerationConfig(max_new_tokens=10)
    ids, probs = plain.generate_ids(plain.batch(batch, 10), greedy)
    ids_s, probs_s = speculative.generate_ids(speculative.batch(batch, 10), greedy)
    assert ids_s.tolist() == ids.tolist() and speculative.decoder.last_stats.rounds == 0
    sampled = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.8, seed=3)
    one = plain.batch(batch[:1], 10)
    assert speculative.generate_ids(one, sampled)[0].tolist() == plain.generate_ids(one, sampled)[0].tolist()
    assert speculative.decoder.last_stats.rounds == 0


def test_a_draft_that_cannot_serve_is_refused_with_what_to_do(nano_fused_artifacts, nano_artifacts, int8_draft):
    with pytest.raises(SpeculativeError, match="--decoder ort-cpu"):
        Pipeline.from_artifacts(nano_artifacts, draft=int8_draft)  # portable decoder: no shared cache
    pipe = Pipeline.from_artifacts(nano_fused_artifacts)
    draft = Pipeline.from_artifacts(int8_draft).decoder
    other_tokenizer = dataclasses.replace(draft.manifest, tokenizer={**draft.manifest.tokenizer, "sha256": "0" * 64})
    with pytest.raises(SpeculativeError, match="tokenizer"):
        SpeculativeDecoder(pipe.decoder, Decoder(draft.runner, draft.embed_table, other_tokenizer))
    wider = dataclasses.replace(draft.manifest, model_config={
        **draft.manifest.model_config,
        "text_config": {**draft.manifest.model_config["text_config"], "hidden_size": 1}})
    with pytest.raises(SpeculativeError, match="architecture"):
        SpeculativeDecoder(pipe.decoder, Decoder(draft.runner, draft.embed_table, wider))
    with pytest.raises(SpeculativeError, match="draft_tokens"):
        SpeculativeDecoder(pipe.decoder, draft, draft_tokens=0)


def test_eov_run_with_a_draft_prints_the_fp32_answer(nano_fused_artifacts, int8_draft, calib_samples):
    from eov_edge.runtime.cli import main

    image = str(calib_samples["landsat7_etm_olinda"].views[0][0])
    common = ["--artifacts", str(nano_fused_artifacts), image, "--task", "caption", "--json", "--no-verify"]
    plain = CliRunner().invoke(main, common, catch_exceptions=False)
    drafted = CliRunner().invoke(main, [*common, "--draft", str(int8_draft), "--draft-tokens", "3"],
                                 catch_exceptions=False)
    assert plain.exit_code == drafted.exit_code == 0, drafted.output
    plain_report, draft_report = json.loads(plain.stdout), json.loads(drafted.stdout)
    assert draft_report["results"][0]["token_ids"] == plain_report["results"][0]["token_ids"]
    assert draft_report["stats"]["speculative"]["rounds"] >= 1
    refused = CliRunner().invoke(main, [*common, "--draft", str(int8_draft), "--backend", "tensorrt",
                                        "--engines", str(int8_draft)])
    assert refused.exit_code != 0 and "ONNX Runtime" in refused.output
