"""Decoding with the preallocated KV cache: PyTorch parity on calib_data, allocation, sampling."""

import numpy as np
import pytest
import torch

from eov_edge.core import manifest as mf
from eov_edge.core.calib import calib_questions
from eov_edge.runtime.generation import Decoder, GenerationConfig, KVCache

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


def test_decode_loop_applies_the_slis_grammar_unless_told_not_to(pipeline):
    """The runtime masks what breaks SLIS (as PyTorch generate() does by default) and leaves the
    runner's logits buffer as the model wrote it."""
    from eov_edge.core.slis_grammar import (
        CLOSE_IDS,
        LOC_FIRST,
        OPEN_IDS,
        SlisGrammar,
        expected_bin,
    )

    decoder = Decoder(pipeline.runners[mf.DECODER], pipeline.embed_table, pipeline.manifest)
    vocab = len(pipeline.embed_table)
    logits = np.zeros((2, vocab), np.float32)
    logits[:, LOC_FIRST + 7] = 10.0  # a location token outside any shape: malformed
    logits[:, 20 + LOC_FIRST] = 9.0
    box = next(i for i, k in OPEN_IDS.items() if k == "box")
    logits[:, box] = 5.0
    before = logits.copy()
    rng = np.random.default_rng(0)
    free = decoder._choose(0, logits, np.zeros(2, bool), GenerationConfig(slis_grammar=False), rng)
    assert free.token_ids.tolist() == [LOC_FIRST + 7] * 2
    grammar = SlisGrammar(2)
    step = decoder._choose(0, logits, np.zeros(2, bool), GenerationConfig(), rng, grammar)
    assert step.token_ids.tolist() == [box, box] and np.array_equal(logits, before)
    unconstrained = np.exp(before[0, box] - before[0].max()) / np.exp(before[0] - before[0].max()).sum()
    assert np.all(step.probs > unconstrained)  # renormalized over the legal tokens
    # inside the box now: a location token, the mean bin of the legal ones (expected_locations, the
    # default), reported with the model's mass within 10 bins of it; after four only </box> is legal
    argmax_grammar = SlisGrammar(2, expected_locations=False)
    argmax_grammar.advance([box, box])
    argmax = decoder._choose(1, logits, np.zeros(2, bool), GenerationConfig(), rng, argmax_grammar)
    assert argmax.token_ids.tolist() == [LOC_FIRST + 7] * 2
    for _ in range(4):
        lowest = max(grammar.bins[0][-2:-1] or [0])  # x2 >= x1, y2 >= y1
        step = decoder._choose(1, logits, np.zeros(2, bool), GenerationConfig(), rng, grammar)
        offset, mass = expected_bin(before[0, LOC_FIRST + lowest : LOC_FIRST + 1000], with_mass=True)
        assert step.token_ids.tolist() == [LOC_FIRST + lowest + offset] * 2
        assert np.allclose(step.probs, mass) and 0.0 < mass < 1.0
    step = decoder._choose(5, logits, np.zeros(2, bool), GenerationConfig(), rng, grammar)
    assert step.token_ids.tolist() == [CLOSE_IDS["box"]] * 2


@pytest.mark.parametrize("artifacts", ["nano_artifacts", "nano_fused_artifacts"])
def test_greedy_grammar_hot_path_gives_the_general_loops_tokens_and_probabilities(artifacts, request, monkeypatch):
    """Greedy decoding under the SLIS grammar (the runtime's default) takes the hot loop too: a row
    whose argmax the grammar allows is not copied, its probability is taken over the legal tokens;
    rows inside a box go the general route row by row. Same tokens and bit-identical probabilities
    (locations: the grammar's mass) as the loop through _choose, in one batch mixing boxes and
    text, with EOS suppressed and with rows that end early."""
    from eov_edge.core.inputs import Sample
    from eov_edge.core.slis_grammar import LOC_END, LOC_FIRST, OPEN_IDS
    from eov_edge.runtime.pipeline import Pipeline

    with Pipeline.from_artifacts(request.getfixturevalue(artifacts), threads=1) as pipe:
        calib = [s for _, s in calib_questions(pipe.spec.image_size)]
        thermal = calib[6:8]  # the two HIT-UAV detection samples
        boxes = [Sample(views=thermal[0].views, instruction="Where is the largest car?"),
                 Sample(views=thermal[1].views, instruction="Where is the largest person?")]
        batch = pipe.batch(calib[:2] + thermal + boxes, 24)
        configs = [GenerationConfig(max_new_tokens=24), GenerationConfig(max_new_tokens=24, min_new_tokens=24)]
        with monkeypatch.context() as patch:
            patch.setattr(Decoder, "_choose", None)  # the hot loop never goes through _choose
            fast = [pipe.generate_ids(batch, config) for config in configs]
        with monkeypatch.context() as patch:
            patch.setattr(Decoder, "_tokens", Decoder._tokens_general)
            general = [pipe.generate_ids(batch, config) for config in configs]
        unscored_ids, unscored_probs = pipe.generate_ids(batch,
                                                         GenerationConfig(max_new_tokens=24, output_scores=False))
    for (ids, probs), (ref_ids, ref_probs) in zip(fast, general):
        assert np.array_equal(ids, ref_ids)
        assert np.array_equal(probs, ref_probs)
    ids = fast[0][0]
    assert np.isin(ids, list(OPEN_IDS)).any() and ((ids >= LOC_FIRST) & (ids < LOC_END)).any()  # boxes decoded
    eos = pipe.manifest.special_tokens["eos"]
    assert any(eos in row[:-1] for row in ids.tolist())  # a row ended early, the batch went on
    assert not (fast[1][0] == eos).any()
    assert np.array_equal(unscored_ids, ids) and np.isnan(unscored_probs).all()


@pytest.mark.parametrize("artifacts", ["nano_artifacts", "nano_fused_artifacts"])
def test_greedy_hot_path_gives_the_general_loops_tokens_and_probabilities(artifacts, request, monkeypatch):
    """Greedy decoding without the grammar takes its own loop (Python lists for per-row state, one
    scratch buffer): the same tokens and bit-identical probabilities as the loop through _choose,
    with EOS suppressed (min_new_tokens) and with rows that end early; no scores when told."""
    from eov_edge.runtime.pipeline import Pipeline

    with Pipeline.from_artifacts(request.getfixturevalue(artifacts), threads=1) as pipe:
        samples = [s for _, s in calib_questions(pipe.spec.image_size)][:4]
        batch = pipe.batch(samples, 24)
        configs = [GenerationConfig(max_new_tokens=24, slis_grammar=False),
                   GenerationConfig(max_new_tokens=24, min_new_tokens=24, slis_grammar=False)]
        fast = [pipe.generate_ids(batch, config) for config in configs]
        with monkeypatch.context() as patch:
            patch.setattr(Decoder, "_tokens", Decoder._tokens_general)
            general = [pipe.generate_ids(batch, config) for config in configs]
        unscored_ids, unscored_probs = pipe.generate_ids(
            batch, GenerationConfig(max_new_tokens=24, slis_grammar=False, output_scores=False))
    eos, pad = pipe.manifest.special_tokens["eos"], pipe.manifest.special_tokens["pad"]
    for (ids, probs), (ref_ids, ref_probs) in zip(fast, general):
        assert np.array_equal(ids, ref_ids)
        assert np.array_equal(probs, ref_probs)
    free_ids, suppressed_ids = fast[0][0], fast[1][0]
    ended = [row for row in free_ids.tolist() if eos in row]
    assert ended and any(row.index(eos) < len(row) - 1 for row in ended)  # rows that end early ...
    assert all(set(row[row.index(eos) + 1:]) <= {pad} for row in ended)  # ... are padded after EOS
    assert suppressed_ids.shape[1] == 24 and not (suppressed_ids == eos).any()
    assert np.array_equal(unscored_ids, free_ids) and np.isnan(unscored_probs).all()
