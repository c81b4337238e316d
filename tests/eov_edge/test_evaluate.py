"""Scoring of model answers per task, and the image-blind baselines beside them."""

import pytest

from eov_edge.data.examples import Example
from eov_edge.evaluate import score


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


def test_eval_cli_refuses_an_unknown_task_kind(tmp_path):
    from click.testing import CliRunner

    from eov_edge.cli import eval_main
    from eov_edge.ship import NANO_CHECKPOINT

    result = CliRunner().invoke(eval_main, ["--checkpoint", str(NANO_CHECKPOINT), "--out", str(tmp_path / "r.json"),
                                            "--task", "segmentation", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "unknown task kind" in result.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.data
def test_eval_of_chosen_tasks_records_the_decoding_mode(tmp_path, shared_data):
    import json

    from eov_edge.evaluate import run_eval
    from eov_edge.ship import NANO_CHECKPOINT

    for grammar in (True, False):
        out = tmp_path / f"grammar-{grammar}.json"
        run_eval(NANO_CHECKPOINT, out, shared_data, per_task=2, tasks=("grounding",), slis_grammar=grammar,
                 progress=False)
        report = json.loads(out.read_text())
        assert list(report["tasks"]) == ["grounding"] and report["tasks"]["grounding"]["n"] == 2
        assert report["slis_grammar"] is grammar
