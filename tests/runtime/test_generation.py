"""Decoding with the preallocated KV cache: PyTorch parity on calib_data, allocation, sampling."""

import numpy as np
import pytest
import torch

from eov_edge.core import manifest as mf
from eov_edge.core.calib import calib_questions
from eov_edge.runtime.generation import Decoder, GenerationConfig, KVCache
from eov_edge.runtime.token_choice import token_rule

pytestmark = pytest.mark.slow
MAX_NEW = 32


def test_token_identical_to_pytorch_generate_on_every_calib_sample(pipeline, shipped):
    model, processor = shipped
    samples = [s for _, s in calib_questions(pipeline.spec.image_size)]
    assert len(samples) == 10
    greedy = GenerationConfig(max_new_tokens=MAX_NEW)
    distinct = set()
    for chosen in [[s] for s in samples] + [samples]:  # each alone, then one left-padded batch
        batch = processor(chosen, max_new_tokens=MAX_NEW)
        with torch.no_grad():
            reference = model.generate(**batch, max_new_tokens=MAX_NEW)
        ours, probs = pipeline.generate_ids({k: v.numpy() for k, v in batch.items()}, greedy)
        for row in range(len(chosen)):
            expected = processor.decode(reference[row].tolist()).token_ids
            got = processor.decode(ours[row].tolist()).token_ids
            assert got == expected, (row, got, expected)
            distinct.add(tuple(got))
        assert np.all((probs > 0) & (probs <= 1))
    assert len(distinct) >= 5  # the trained model answers input by input


def test_cache_buffers_are_allocated_once_per_generation(pipeline, monkeypatch):
    """Every decode step passes the same past and present arrays: no per-step cache reallocation."""
    runner = pipeline.runners[mf.DECODER]
    calls = []
    real_infer = runner.infer

    def recording_infer(feed, outputs=None):
        calls.append(({k: id(v) for k, v in feed.items() if k.startswith("past.")},
                      {k: id(v) for k, v in (outputs or {}).items()}))
        return real_infer(feed, outputs)

    monkeypatch.setattr(runner, "infer", recording_infer)
    samples = [s for _, s in calib_questions(pipeline.spec.image_size)][:2]
    batch = pipeline.batch(samples, 12)
    pipeline.generate_ids(batch, GenerationConfig(max_new_tokens=12, do_sample=True, seed=3))
    prefill, *steps = calls
    assert prefill[1] == {} and len(steps) >= 2
    assert all(step == steps[0] for step in steps), "cache arrays changed between steps"
    assert set(steps[0][1]) == {mf.LOGITS, *mf.present_names(pipeline.manifest.num_layers)}


def test_kv_cache_writes_prompt_then_one_slot_per_step():
    cache = KVCache(num_layers=1, batch=2, kv_heads=1, head_dim=2, capacity=4)
    prompt = [np.full((2, 1, 2, 2), 7.0, np.float32), np.full((2, 1, 2, 2), 8.0, np.float32)]
    cache.write_prompt(prompt, np.array([[0, 1], [1, 1]]))
    assert cache.mask.tolist() == [[0, 1, 0, 0, 1], [1, 1, 0, 0, 1]]
    assert all(p.shape == (2, 1, 1, 2) for p in cache.present)  # the fed token only
    for present in cache.present:
        present[...] = 5.0
    cache.append_step()
    assert cache.past[0][:, 0, :, 0].tolist() == [[7, 7, 5, 0], [7, 7, 5, 0]]
    assert cache.mask[:, 2].tolist() == [1, 1] and cache.length == 3
    cache.append_step(copy=False)  # a device-resident cache (TensorRT) wrote the slot itself
    assert cache.past[0][:, 0, :, 0].tolist() == [[7, 7, 5, 0], [7, 7, 5, 0]]
    assert cache.mask[:, 3].tolist() == [1, 1] and cache.length == 4
    with pytest.raises(ValueError, match="full"):
        cache.append_step()


def test_sampling_is_seeded_and_top_k_1_is_greedy(pipeline):
    samples = [s for _, s in calib_questions(pipeline.spec.image_size)][:3]
    batch = pipeline.batch(samples, 16)
    greedy, _ = pipeline.generate_ids(batch, GenerationConfig(max_new_tokens=16))
    top1, _ = pipeline.generate_ids(batch, GenerationConfig(max_new_tokens=16, do_sample=True, top_k=1, seed=5))
    assert np.array_equal(greedy, top1)
    hot = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=2.0, seed=11)
    a, _ = pipeline.generate_ids(batch, hot)
    b, _ = pipeline.generate_ids(batch, hot)
    c, _ = pipeline.generate_ids(batch, GenerationConfig(max_new_tokens=16, do_sample=True, temperature=2.0, seed=12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generation_config_and_context_checks(pipeline):
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(do_sample=True, temperature=0)
    decoder = Decoder(pipeline.runners[mf.DECODER], pipeline.embed_table, pipeline.manifest)
    length = pipeline.manifest.max_context
    embeds = np.zeros((1, length, pipeline.embed_table.shape[1]), np.float32)
    from eov_edge.core.errors import PromptError

    with pytest.raises(PromptError, match="exceed the context"):
        next(decoder.steps(embeds, np.ones((1, length), np.int64), GenerationConfig(max_new_tokens=1)))


def test_the_token_rules_apply_the_slis_grammar_unless_told_not_to(pipeline):
    """The runtime masks what breaks SLIS (as PyTorch generate() does by default) and leaves the
    runner's logits buffer as the model wrote it; greedy and sampling alike."""
    from eov_edge.core.slis_grammar import CLOSE_IDS, LOC_FIRST, OPEN_IDS, expected_bin

    vocab = len(pipeline.embed_table)
    eos, pad = pipeline.manifest.special_tokens["eos"], pipeline.manifest.special_tokens["pad"]
    logits = np.zeros((2, vocab), np.float32)
    logits[:, LOC_FIRST + 7] = 10.0  # a location token outside any shape: malformed
    logits[:, 20 + LOC_FIRST] = 9.0
    box = next(i for i, k in OPEN_IDS.items() if k == "box")
    logits[:, box] = 5.0
    before = logits.copy()

    def rule(**settings):
        return token_rule(2, vocab, GenerationConfig(**settings), eos, pad)

    assert rule(slis_grammar=False).choose(0, logits).token_ids.tolist() == [LOC_FIRST + 7] * 2
    for constrained in (rule(), rule(do_sample=True, top_k=1)):
        step = constrained.choose(0, logits)
        assert step.token_ids.tolist() == [box, box] and np.array_equal(logits, before)
        unconstrained = np.exp(before[0, box] - before[0].max()) / np.exp(before[0] - before[0].max()).sum()
        assert np.all(step.probs > unconstrained)  # renormalized over the legal tokens
        # inside the box now: a location token, the mean bin of the legal ones (expected_locations,
        # the default), reported with the model's mass within 10 bins of it; after four only </box>
        for _ in range(4):
            lowest = max(constrained.grammar.bins[0][-2:-1] or [0])  # x2 >= x1, y2 >= y1
            step = constrained.choose(1, logits)
            offset, mass = expected_bin(before[0, LOC_FIRST + lowest : LOC_FIRST + 1000], with_mass=True)
            assert step.token_ids.tolist() == [LOC_FIRST + lowest + offset] * 2
            assert np.allclose(step.probs, mass) and 0.0 < mass < 1.0
        assert constrained.choose(5, logits).token_ids.tolist() == [CLOSE_IDS["box"]] * 2
    argmax_locations = rule(expected_locations=False)
    argmax_locations.choose(0, logits)
    assert argmax_locations.choose(1, logits).token_ids.tolist() == [LOC_FIRST + 7] * 2
    assert np.array_equal(logits, before)


@pytest.mark.parametrize("artifacts", ["nano_artifacts", "nano_fused_artifacts"])
@pytest.mark.parametrize("grammar", [True, False])
def test_greedy_rule_agrees_with_sampling_at_top_k_1(artifacts, grammar, request):
    """Two implementations of one choice: the greedy rule (the hot path: argmax, a copy only of a row
    the grammar or EOS overrides, probabilities in float32 exponentials) and the sampling rule at
    top_k 1 (a masked copy of every row, a float64 softmax) give the same tokens and the same
    probabilities (to float rounding), in one batch mixing boxes and text, with EOS suppressed and
    with rows that end early; without scores the same tokens and NaN probabilities."""
    from eov_edge.core.inputs import Sample
    from eov_edge.core.slis_grammar import LOC_END, LOC_FIRST, OPEN_IDS
    from eov_edge.runtime.pipeline import Pipeline

    with Pipeline.from_artifacts(request.getfixturevalue(artifacts), threads=1) as pipe:
        calib = [s for _, s in calib_questions(pipe.spec.image_size)]
        thermal = calib[6:8]  # the two HIT-UAV detection samples
        boxes = [Sample(views=thermal[0].views, instruction="Where is the largest car?"),
                 Sample(views=thermal[1].views, instruction="Where is the largest person?")]
        batch = pipe.batch(calib[:2] + thermal + boxes, 24)
        results = {}
        for min_new in (0, 24):
            for sampled in (False, True):
                config = GenerationConfig(max_new_tokens=24, min_new_tokens=min_new, slis_grammar=grammar,
                                          do_sample=sampled, top_k=1 if sampled else 0)
                results[min_new, sampled] = pipe.generate_ids(batch, config)
        unscored_ids, unscored_probs = pipe.generate_ids(
            batch, GenerationConfig(max_new_tokens=24, slis_grammar=grammar, output_scores=False))
    for min_new in (0, 24):
        (ids, probs), (ref_ids, ref_probs) = results[min_new, False], results[min_new, True]
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-9)
    ids = results[0, False][0]
    eos, pad = pipe.manifest.special_tokens["eos"], pipe.manifest.special_tokens["pad"]
    ended = [row for row in ids.tolist() if eos in row]
    assert ended and any(row.index(eos) < len(row) - 1 for row in ended)  # rows that end early ...
    assert all(set(row[row.index(eos) + 1:]) <= {pad} for row in ended)  # ... are padded after EOS
    assert not (results[24, False][0] == eos).any()
    if grammar:
        assert np.isin(ids, list(OPEN_IDS)).any() and ((ids >= LOC_FIRST) & (ids < LOC_END)).any()  # boxes
    assert np.array_equal(unscored_ids, ids) and np.isnan(unscored_probs).all()
