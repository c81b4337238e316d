"""Metrics against hand-computed cases."""

import math

import pytest

from eov_edge.core import metrics as m


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # contained
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # degenerate: no division by zero
    ],
)
def test_iou(a, b, expected):
    assert m.iou(a, b) == pytest.approx(expected)
    assert m.iou(b, a) == pytest.approx(expected)


def test_multilabel_bigearthnet_style_sample_average():
    pred = [["water", "forest"], ["pasture"], []]
    true = [["water"], ["pasture", "forest", "urban"], ["water"]]
    scores = m.multilabel_scores(pred, true)
    # sample 1: P=1/2 R=1 F1=2/3; sample 2: P=1 R=1/3 F1=1/2; sample 3: P=0 R=0 F1=0
    assert scores["precision"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert scores["recall"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert scores["f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_grounding_scores_count_missing_boxes_as_misses():
    targets = [(0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10)]
    preds = [(0, 0, 10, 10), (5, 0, 15, 10), None]
    s = m.grounding_scores(preds, targets)
    assert s["p@0.5"] == pytest.approx(1 / 3)
    assert s["mean_iou"] == pytest.approx((1 + 1 / 3) / 3)
    assert s["centre_hit"] == pytest.approx(2 / 3)  # (10, 5) lies on the edge of the target
    assert s["well_formed"] == pytest.approx(2 / 3)


def test_detection_matching_is_one_to_one_and_label_aware():
    true = [[("car", (0, 0, 10, 10)), ("car", (20, 20, 30, 30)), ("person", (50, 50, 52, 56))]]
    pred = [[("car", (0, 0, 10, 10)), ("car", (1, 1, 10, 10)), ("person", (20, 20, 30, 30))]]
    s = m.detection_scores(pred, true)
    # one car matches; the duplicate car and the mislabelled person do not
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3)
    assert m.detection_scores([[]], [[]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_accuracy_ignores_case_and_spacing():
    assert m.accuracy(["Yes", " 3 ", "no"], ["yes", "3", "yes"]) == pytest.approx(2 / 3)


def test_bleu4_perfect_and_hand_computed():
    refs = [["the cat sat on the mat"]]
    assert m.bleu4(["the cat sat on the mat"], refs) == pytest.approx(1.0)
    # candidate "the cat sat on a mat": 1-gram 5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3, same length
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert m.bleu4(["the cat sat on a mat"], refs) == pytest.approx(expected)
    # shorter candidate pays the brevity penalty
    short = m.bleu4(["the cat sat on the"], refs)
    assert short == pytest.approx(math.exp(1 - 6 / 5) * 1.0)
    assert m.bleu4(["dog"], refs) == 0.0


def test_cider_d_rewards_consensus():
    refs = [["a thermal image with two cars"], ["a sar image with one ship"], ["farmland with fields"]]
    perfect = m.cider_d([r[0] for r in refs], refs)
    wrong = m.cider_d(["farmland with fields", "a thermal image with two cars", "a sar image with one ship"], refs)
    assert perfect > 5.0 and wrong < 0.5 * perfect
    assert m.cider_d([], []) == 0.0
