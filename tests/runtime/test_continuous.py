"""Continuous batching over the fused CPU decoder: answers that join and leave a running batch at
their own steps are the answers each request gets alone."""

import threading

import numpy as np
import pytest

from eov_edge.core.paths import PROJECT_ROOT
from eov_edge.runtime.continuous import Admission, ContinuousBatch, unsupported_reason
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.pipeline import Pipeline
from eov_edge.runtime.prefix_cache import content_key
from eov_edge.runtime.service import Scheduler, ServiceConfig, parse_chat_request

CALIB = PROJECT_ROOT / "calib_data"
IMAGES = [  # (path, band set)
    (CALIB / "heldout" / "views" / "grounding" / "grounding_06_v0.png", "thermal8"),
    (CALIB / "optical" / "ucmerced_airplane00" / "airplane00.tif", None),
    (CALIB / "optical" / "eurosat_rgb_pasture_300" / "Pasture_300.jpg", None),
]
GREEDY = GenerationConfig(max_new_tokens=24)


@pytest.fixture(scope="module")
def pipeline(nano_fused_artifacts):
    with Pipeline.from_artifacts(nano_fused_artifacts) as opened:
        yield opened


def admission(pipeline, image: int, task=None, prompt=None, generation=GREEDY, owner=None) -> Admission:
    path, band_set = IMAGES[image]
    views = [pipeline.read(str(path), band_set=band_set)]
    sample = pipeline.sample(views, task, prompt)
    batch = pipeline.batch([sample], 1)
    return Admission(sample, task, generation, content_key(batch["pixel_values"], batch["modality_ids"]),
                     owner if owner is not None else object())


def alone(pipeline, a: Admission):
    """The answer the request gets on its own, through the pipeline's batch path (prompt prefilled whole)."""
    return pipeline.answer_samples([a.sample], a.generation, a.task)[0]


def drive(batch: ContinuousBatch, schedule: dict[int, list[Admission]]) -> dict:
    """Admit ``schedule[k]`` before decode step k; step until every answer ended. Answers by owner."""
    answers, steps = {}, 0
    while steps <= max(schedule) or batch.running:
        events = batch.admit(schedule.get(steps, []))
        if batch.running:
            events += batch.step()
        for event in events:
            assert event.error is None, event.error
            if event.answer is not None:
                answers[event.owner] = event.answer
        steps += 1
    return answers


def test_answers_joining_at_different_steps_equal_each_answered_alone(pipeline):
    sampled = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=0.8, top_k=20, seed=7)
    early = [admission(pipeline, 0, "detection", generation=GenerationConfig(max_new_tokens=48)),
             admission(pipeline, 1, prompt="Describe the image.")]
    late = [admission(pipeline, 2, "caption", generation=GenerationConfig(max_new_tokens=3)),
            admission(pipeline, 0, prompt="How many people are there?", generation=sampled)]
    last = [admission(pipeline, 1, "caption")]
    batch = ContinuousBatch(pipeline, slots=4)
    got = drive(batch, {0: early, 3: late, 9: last})
    for a in early + late + last:
        want = alone(pipeline, a)
        assert got[a.owner].token_ids == want.token_ids, a.sample.instruction
        np.testing.assert_allclose(got[a.owner].token_probs, want.token_probs, atol=1e-5)
        assert got[a.owner].cut_at_budget == want.cut_at_budget
    assert got[late[0].owner].cut_at_budget and len(got[late[0].owner].token_ids) == 3  # its own budget
    # the steps carried the rows in use, not a fixed batch of 4
    assert batch.steps > 0 and batch.step_rows < 4 * batch.steps
    assert batch.running == 0 and all(row is None for row in batch.rows)


def test_a_freed_row_is_taken_by_the_next_request_and_a_lone_request_decodes_alone(pipeline):
    batch = ContinuousBatch(pipeline, slots=2)
    first, second = admission(pipeline, 1, "caption"), admission(pipeline, 2, "caption")
    batch.admit([first, second])
    batch.step()
    assert batch.release_owner(first.owner) and batch.rows[0] is None  # its client went away
    third = admission(pipeline, 0, "detection")
    batch.admit([third])
    assert batch.rows[0].admission is third  # the lowest free row
    got = drive(batch, {0: []})
    assert first.owner not in got
    for a in (second, third):
        assert got[a.owner].token_ids == alone(pipeline, a).token_ids
    # a lone request takes row 0 and its steps run that row only (the call bound for width 1)
    lone = admission(pipeline, 1, prompt="Describe the image.")
    batch.admit([lone])
    assert batch.rows[0].admission is lone
    batch.step()
    assert batch.last_width == 1


def test_the_image_block_is_prefilled_once_across_requests(pipeline):
    pipeline.prefix_cache.clear()
    batch = ContinuousBatch(pipeline, slots=3)
    questions = ["How many people are there?", "Is there a car in the image?", "Describe the image."]
    first = admission(pipeline, 0, prompt=questions[0])
    batch.admit([first])
    encodes = len(pipeline.runners["encoder"].timings)
    rest = [admission(pipeline, 0, prompt=q) for q in questions[1:]]
    got = drive(batch, {0: [], 2: rest})
    assert len(pipeline.runners["encoder"].timings) == encodes  # the views came from the cache
    kv_entries = [k for k in pipeline.prefix_cache._entries if k.startswith(f"{first.views_key}:")]
    assert len(kv_entries) == 1  # one image block's keys and values, shared by the three questions
    for a in rest:
        assert got[a.owner].token_ids == alone(pipeline, a).token_ids


def test_a_request_that_cannot_be_answered_gets_its_error_and_the_others_their_answers(pipeline):
    from eov_edge.core.errors import PromptError

    batch = ContinuousBatch(pipeline, slots=2)
    too_long = admission(pipeline, 1, "caption", generation=GenerationConfig(max_new_tokens=10_000))
    fine = admission(pipeline, 2, "caption")
    events = batch.admit([too_long, fine])
    errors = [e for e in events if e.error is not None]
    assert [e.owner for e in errors] == [too_long.owner] and isinstance(errors[0].error, PromptError)
    assert batch.running == 1
    assert drive(batch, {0: []})[fine.owner].token_ids == alone(pipeline, fine).token_ids


def test_portable_artifacts_are_refused_with_the_export_to_use(nano_artifacts):
    with Pipeline.from_artifacts(nano_artifacts) as portable:
        assert "--decoder ort-cpu" in unsupported_reason(portable)
        with pytest.raises(ValueError, match="fused CPU decoder"):
            ContinuousBatch(portable, slots=2)
        scheduler = Scheduler(portable, ServiceConfig(max_batch=2))
        try:
            assert scheduler.continuous is None  # the service batches by window there
        finally:
            scheduler.drain()


def test_the_scheduler_streams_and_answers_requests_sharing_steps(pipeline):
    config = ServiceConfig(max_batch=3, allow_root=CALIB)
    scheduler = Scheduler(pipeline, config)
    try:
        assert scheduler.continuous is not None and scheduler.continuous.slots == 3

        def body(image: int, text: str, **extra) -> dict:
            path, band_set = IMAGES[image]
            content = [{"type": "image_url", "image_url": {"url": str(path)}}, {"type": "text", "text": text}]
            return {"messages": [{"role": "user", "content": content}], "band_set": band_set, **extra}

        asks = [body(0, "detect"), body(1, "Describe the image.", stream=True), body(2, "caption", stream=True),
                body(0, "How many people are there?"), body(1, "detect", max_tokens=5)]
        requests = [parse_chat_request(b, pipeline, config) for b in asks]
        pieces = {i: [] for i, r in enumerate(requests) if r.stream}
        lock = threading.Lock()
        for i in pieces:
            requests[i].on_text = lambda text, i=i: (lock.acquire(), pieces[i].append(text), lock.release())
        futures = [scheduler.submit(r) for r in requests]  # five requests, three rows: two wait for a free row
        answers = [f.result(timeout=300) for f in futures]
        for r, answer in zip(requests, answers):
            want = pipeline.answer(r.views, r.task, r.prompt, r.generation)[0]
            assert answer.token_ids == want.token_ids
        for i, got in pieces.items():
            assert "".join(got) == answers[i].text and len(got) > 1
        metrics = scheduler.metrics
        assert metrics.requests["ok"] == 5 and metrics.first_tokens == 5
        assert max(metrics.batch_sizes) <= 3 and metrics.batch_requests > metrics.batches  # steps shared
    finally:
        scheduler.drain()



def test_a_failed_step_fails_its_requests_and_the_service_goes_on(pipeline, monkeypatch):
    scheduler = Scheduler(pipeline, ServiceConfig(max_batch=2, allow_root=CALIB))
    try:
        path, band_set = IMAGES[1]
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}},
                                                            {"type": "text", "text": "caption"}]}]}
        broken = ContinuousBatch.step

        def fail(self):
            raise RuntimeError("decoder failed")

        monkeypatch.setattr(ContinuousBatch, "step", fail)
        with pytest.raises(RuntimeError, match="decoder failed"):
            scheduler.submit(parse_chat_request(body, pipeline, scheduler.config)).result(timeout=120)
        monkeypatch.setattr(ContinuousBatch, "step", broken)
        request = parse_chat_request(body, pipeline, scheduler.config)
        answer = scheduler.submit(request).result(timeout=120)  # the scheduler thread lived on
        assert answer.token_ids == pipeline.answer(request.views, request.task, request.prompt,
                                                   request.generation)[0].token_ids
        assert scheduler.metrics.requests["error"] == 1 and scheduler.continuous.running == 0
    finally:
        scheduler.drain()
