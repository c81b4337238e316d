"""Many questions about one sample: the image block prefilled once and shared, on every CPU decoder
and recipe, each answer token for token the one the question gets alone; the prefix cache reuses
the encoded views and the prefix on a later call and stays within its byte bound."""

from __future__ import annotations

import pytest

from eov_edge.core import manifest as mf
from eov_edge.core.tasks import TASKS
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.pipeline import Pipeline

pytestmark = pytest.mark.slow
GENERATION = GenerationConfig(max_new_tokens=24)
FREE_PROMPT = "How many vehicles are in the image?"


@pytest.fixture(scope="module", params=["fp32-portable", "fp32-fused", "ort-cpu-int8", "ort-cpu-int4"])
def artifacts(request, nano_artifacts, nano_fused_artifacts, tmp_path_factory):
    from eov_edge.quantize.build import write_ungated

    if request.param == "fp32-portable":
        return nano_artifacts
    if request.param == "fp32-fused":
        return nano_fused_artifacts
    return write_ungated(nano_fused_artifacts, request.param, tmp_path_factory.mktemp("q") / request.param)


def questions_for(views):
    return [(task, None) for task, spec in TASKS.items() if spec.min_views <= len(views)] + [(None, FREE_PROMPT)]


def test_shared_prefix_answers_equal_answers_alone(artifacts, calib_samples):
    pipe = Pipeline.from_artifacts(artifacts, threads=1, verify_hashes=False)
    asked = 0
    for sample in calib_samples.values():  # all six modalities, one to several views
        views = sample.read(size=pipe.spec.image_size)
        questions = questions_for(views)
        together = pipe.answer_questions(views, questions, GENERATION)
        for (task, prompt), answer in zip(questions, together):
            [alone] = pipe.answer(views, task=task, prompt=prompt, generation=GENERATION)
            assert answer.token_ids == alone.token_ids, (artifacts.name, sample.id, task or prompt)
            asked += 1
    assert asked >= 4 * len(calib_samples)
    # dynamic INT8 quantizes activations with one scale per call: sharing a call would change answers,
    # so its questions are decoded alone (on views encoded once) and no prefix is kept
    assert pipe.manifest.batch_invariant == (artifacts.name != "ort-cpu-int8")
    per_sample = 2 if pipe.manifest.batch_invariant else 1  # views (+ the prefix's keys and values)
    assert pipe.prefix_cache.stats()["entries"] == per_sample * len(calib_samples)


def test_a_later_call_reuses_the_encoded_views_and_the_prefix(nano_fused_artifacts, calib_samples):
    pipe = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, verify_hashes=False)
    sample = next(s for s in calib_samples.values() if len(s.views) == 1)
    views = sample.read(size=pipe.spec.image_size)
    first = pipe.answer_questions(views, [("caption", None), ("classification", None)], GENERATION)
    encoder, decoder = (len(pipe.runners[name].timings) for name in (mf.ENCODER, mf.DECODER))
    hits = pipe.prefix_cache.hits
    [later] = pipe.answer_questions(views, [(None, FREE_PROMPT)], GENERATION)
    assert pipe.prefix_cache.hits == hits + 2  # the views' embeddings and the prefix's keys and values
    assert len(pipe.runners[mf.ENCODER].timings) == encoder  # not encoded again
    # one call feeds the question's own tokens on the cached prefix; then the decode steps
    assert len(pipe.runners[mf.DECODER].timings) - decoder == 1 + len(later.token_ids) - 1 + \
        (len(later.token_ids) < GENERATION.max_new_tokens)
    [alone] = pipe.answer(views, prompt=FREE_PROMPT, generation=GENERATION)
    assert later.token_ids == alone.token_ids and first[0].token_ids == \
        pipe.answer(views, task="caption", generation=GENERATION)[0].token_ids
    assert pipe.stats()["prefix_cache"]["hits"] == pipe.prefix_cache.hits


def test_the_cache_never_passes_its_byte_bound(nano_artifacts, calib_samples):
    probe = Pipeline.from_artifacts(nano_artifacts, threads=1, verify_hashes=False)
    sample = next(iter(calib_samples.values()))
    probe.answer_questions(sample.read(size=probe.spec.image_size), [("caption", None)], GENERATION)
    one_sample = probe.prefix_cache.nbytes  # views + prefix of a one-view sample
    bound_mb = 2.5 * one_sample / (1 << 20)
    pipe = Pipeline.from_artifacts(nano_artifacts, threads=1, verify_hashes=False, prefix_cache_mb=bound_mb)
    for sample in calib_samples.values():
        views = sample.read(size=pipe.spec.image_size)
        answers = pipe.answer_questions(views, [("caption", None), (None, FREE_PROMPT)], GENERATION)
        assert pipe.prefix_cache.nbytes <= pipe.prefix_cache.max_bytes
        [alone] = pipe.answer(views, prompt=FREE_PROMPT, generation=GENERATION)
        assert answers[1].token_ids == alone.token_ids
    assert pipe.prefix_cache.evictions > 0 and len(pipe.prefix_cache) >= 1
    off = Pipeline.from_artifacts(nano_artifacts, threads=1, verify_hashes=False, prefix_cache_mb=0)
    off.answer_questions(views, [("caption", None), (None, FREE_PROMPT)], GENERATION)
    assert len(off.prefix_cache) == 0  # a zero bound keeps nothing and still shares within the call


def test_a_batch_of_images_from_the_cache_answers_as_encoded_now(nano_fused_artifacts, calib_samples):
    """answer_samples(cache_views=True), as eov-serve batches requests about several images: each
    image encoded once and kept, later batches take it from the cache; the answers stay the batch's."""
    pipe = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, verify_hashes=False)
    samples = [pipe.sample(s.read(size=pipe.spec.image_size), "caption") for s in list(calib_samples.values())[:4]]
    samples.append(samples[0])  # the same image twice in one batch
    want = [a.token_ids for a in pipe.answer_samples(samples, GENERATION, "caption")]
    encoder = pipe.runners[mf.ENCODER]
    before = len(encoder.timings)
    assert [a.token_ids for a in pipe.answer_samples(samples, GENERATION, "caption", cache_views=True)] == want
    assert len(encoder.timings) == before + 1  # the four images in one encoder call
    assert [a.token_ids for a in pipe.answer_samples(samples[::-1], GENERATION, "caption", cache_views=True)] == want[::-1]
    assert len(encoder.timings) == before + 1  # all from the cache now


def test_rows_with_their_own_budgets_answer_as_asked_alone(nano_fused_artifacts, calib_samples):
    """One batch decodes to its largest budget; each row is cut at its own, as eov-serve batches
    a 96-token detection with 32-token questions."""
    pipe = Pipeline.from_artifacts(nano_fused_artifacts, threads=1, verify_hashes=False)
    sample = next(iter(calib_samples.values()))
    views = sample.read(size=pipe.spec.image_size)
    questions = [("detection", None), ("caption", None), (None, FREE_PROMPT)]
    budgets = [24, 4, 12]
    alone = [pipe.answer_questions(views, [q], GenerationConfig(max_new_tokens=b))[0] for q, b in zip(questions, budgets)]
    together = pipe.answer_questions(views, questions, GenerationConfig(), budgets=budgets)
    assert [a.token_ids for a in together] == [a.token_ids for a in alone]
    assert [a.cut_at_budget for a in together] == [a.cut_at_budget for a in alone]
    samples = [pipe.sample(views, t, p) for t, p in questions]
    batched = pipe.answer_samples(samples, GenerationConfig(), tasks=[t for t, _ in questions], budgets=budgets)
    assert [a.token_ids for a in batched] == [a.token_ids for a in alone]
