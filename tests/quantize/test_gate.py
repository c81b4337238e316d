"""The gate's paired intervals of metric drops: a real loss against the luck of the draw."""

import pytest

from eov_edge.evaluation.examples import Example
from eov_edge.quantize.gate import drop_intervals


def _examples(n: int, task: str = "classification") -> list[Example]:
    return [Example(task, [], "What is the dominant land cover?", ["water", "forest"][i % 2], {}, f"s{i}")
            for i in range(n)]


def test_identical_answers_have_no_drop_at_all():
    examples = _examples(60)
    answers = [e.answer for e in examples]
    assert drop_intervals("classification", ["accuracy"], answers, answers, examples, 224)["accuracy"] == (0.0, 0.0)


def test_a_real_loss_is_above_zero_and_a_handful_of_flips_is_not():
    examples = _examples(200)
    reference = [e.answer for e in examples]
    # 30 of 200 answers wrong: a 15-point drop, clearly more than chance
    worse = [("forest" if a == "water" else "water") if i < 30 else a for i, a in enumerate(reference)]
    low, high = drop_intervals("classification", ["accuracy"], reference, worse, examples, 224)["accuracy"]
    assert 8.0 < low < 15.0 < high < 22.0
    # 3 answers turn wrong and 1 turns right: a 1-point drop that re-drawing the examples can undo
    mixed = [("forest" if a == "water" else "water") if i in (0, 1, 2) else a for i, a in enumerate(reference)]
    mixed_ref = [("forest" if a == "water" else "water") if i == 3 else a for i, a in enumerate(reference)]
    low, high = drop_intervals("classification", ["accuracy"], mixed_ref, mixed, examples, 224)["accuracy"]
    assert low <= 0.0 < high


def test_other_tasks_are_left_out_of_the_resampling():
    examples = _examples(40) + _examples(40, task="cross_modal")
    reference = [e.answer for e in examples]
    candidate = reference[:40] + ["nonsense"] * 40  # only cross_modal answers change
    assert drop_intervals("classification", ["accuracy"], reference, candidate, examples, 224)["accuracy"] == (0.0, 0.0)
    low, high = drop_intervals("cross_modal", ["accuracy"], reference, candidate, examples, 224)["accuracy"]
    assert low == pytest.approx(100.0) and high == pytest.approx(100.0)


def test_several_metrics_of_a_task_come_from_the_same_resamples():
    examples = [Example("vqa", [], f"How many {c}s?", a, {"kind": "count"}, f"s{i}")
                for i, (c, a) in enumerate([("car", "1"), ("person", "0")] * 30)]
    reference = [e.answer for e in examples]
    candidate = ["2" if i % 6 == 0 else a for i, a in enumerate(reference)]  # 10 of 60 wrong
    out = drop_intervals("vqa", ["accuracy", "count_accuracy"], reference, candidate, examples, 224)
    assert out["accuracy"] == out["count_accuracy"]  # every question is a count: the same resamples
    assert 0.0 < out["accuracy"][0] < 100 / 6 < out["accuracy"][1]
