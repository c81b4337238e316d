"""Scoring of model answers per task, and the image-blind baselines beside them."""

import pytest

from eov_edge.evaluation.examples import Example
from eov_edge.evaluation.scoring import score


def example(task, answer, target, instruction="q"):
    return Example(task, [], instruction, answer, target, "synthetic")


def test_grounding_scores_parse_boxes_and_fit_the_mean_box_baseline():
    gt = [(0.0, 0.0, 112.0, 112.0), (112.0, 112.0, 224.0, 224.0)]
    examples = [example("grounding", "", {"box": b}) for b in gt]
    train = [example("grounding", "", {"box": (0.0, 0.0, 224.0, 224.0)})]
    preds = ["<box><loc_0><loc_0><loc_499><loc_499></box>", "garbage"]
    s = score("grounding", preds, examples, train, size=224)
    assert s["p@0.5"] == pytest.approx(0.5) and s["well_formed"] == pytest.approx(0.5)
    assert s["baseline_mean_iou"] == pytest.approx(0.25)  # the full-image box covers 1/4 of each
    assert s["distinct_answers"] == 2


def test_vqa_baseline_is_the_majority_answer_of_the_same_question():
    train = [example("vqa", "2", {"kind": "count"}, "How many cars are there?")] * 3 + \
        [example("vqa", "no", {"kind": "presence"}, "Is there a car in the image?")] * 2
    examples = [example("vqa", "2", {"kind": "count"}, "How many cars are there?"),
                example("vqa", "yes", {"kind": "presence"}, "Is there a car in the image?")]
    s = score("vqa", ["2", "yes"], examples, train, size=224)
    assert s["accuracy"] == 1.0 and s["baseline_accuracy"] == 0.5
    assert s["count_accuracy"] == 1.0 and s["baseline_presence_accuracy"] == 0.0


def test_change_accuracy_reads_the_first_word():
    examples = [example("change", "no", {"changed": False, "boxes": []}),
                example("change", "yes", {"changed": True, "boxes": [("car", (0.0, 0.0, 22.4, 22.4))]})]
    preds = ["no", "yes <t1>car <box><loc_0><loc_0><loc_99><loc_99></box>"]
    s = score("change", preds, examples, [examples[0]], size=224)
    assert s["accuracy"] == 1.0 and s["baseline_accuracy"] == 0.5 and s["box_f1"] == 1.0


def test_temporal_direction_baseline_without_direction_questions_in_train():
    """A tiny evaluation whose training sample holds only track questions must still score."""
    examples = [example("temporal", "north", {"kind": "direction", "direction": "north"})]
    train = [example("temporal", "", {"kind": "track", "boxes": []})]
    s = score("temporal", ["north"], examples, train, size=224)
    assert s["direction_accuracy"] == 1.0 and s["baseline_direction_accuracy"] == 1.0


def test_margin_interval_is_paired_and_separates_a_clear_win_from_a_tie():
    from eov_edge.evaluation.scoring import add_margins, margin_interval, score_predictions

    train = [example("classification", "forest", {})] * 3
    truth = ["forest", "water"] * 20  # the baseline ("forest") is right on half
    examples = [example("classification", t, {}) for t in truth]
    low, high = margin_interval("classification", truth, examples, train, 224)
    assert 0.3 < low <= 0.5 <= high < 0.7  # a perfect model: +0.5, and never a negative resample
    low, high = margin_interval("classification", ["forest"] * 40, examples, train, 224)
    assert low == high == 0.0  # the baseline's own answers: paired, so exactly 0 on every resample
    coin = ["forest", "forest", "water", "water"] * 10  # right on half, not the same half as the baseline
    low, high = margin_interval("classification", coin, examples, train, 224)
    assert low < 0 < high
    full = score_predictions(coin, examples, train, 224)
    add_margins(full, coin, examples, train, 224)
    report = full["tasks"]["classification"]
    assert report["headline"] == "accuracy" and report["margin"] == pytest.approx(0.0)
    assert report["margin_ci95"][0] < 0 < report["margin_ci95"][1]


def test_score_without_baselines_gives_the_same_metrics_and_no_baseline():
    cases = {
        "classification": ([Example("classification", [], "q", a, {}, "s") for a in ("water", "forest", "water")],
                           ["water", "water", "water"]),
        "vqa": ([Example("vqa", [], f"How many {c}s?", a, {"kind": k}, "s")
                 for c, a, k in (("car", "1", "count"), ("car", "yes", "presence"), ("ship", "0", "count"))],
                ["1", "no", "2"]),
        "caption": ([Example("caption", [], "q", "two cars on a road", {"references": ["two cars on a road",
                                                                                        "a road with two cars"]}, "s")] * 2,
                    ["two cars on a road", "one person"]),
        "grounding": ([Example("grounding", [], "q", "", {"box": [10, 10, 50, 60]}, "s")] * 2,
                      ["<box><loc_100><loc_100><loc_300><loc_300></box>", "nonsense"]),
    }
    for task, (examples, preds) in cases.items():
        full = score(task, preds, examples, examples, 224)
        lean = score(task, preds, examples, examples, 224, baselines=False)
        assert not any(k.startswith("baseline_") for k in lean), task
        assert lean == {k: v for k, v in full.items() if not k.startswith("baseline_")}, task
        assert any(k.startswith("baseline_") for k in full), task


def test_an_answer_cut_inside_its_last_shape_is_well_formed_a_broken_one_is_not():
    from eov_edge.evaluation.scoring import well_formed

    whole = "car <box><loc_1><loc_2><loc_30><loc_40></box>"
    assert well_formed(whole) and well_formed(whole + ", car <box><loc_5><loc_6>")  # the budget ran out
    assert not well_formed("car <box><loc_1><loc_2></quad>")  # closed by the wrong tag
    assert not well_formed("car <box><loc_1><loc_2><box><loc_3>")  # a shape opened inside another
