"""eov-eval on the PyTorch model: run_eval, predict, and the data folder's examples."""

import pytest

from eov_edge.evaluation.examples import Example


def example(task, answer, target, instruction="q"):
    return Example(task, [], instruction, answer, target, "synthetic")


def test_eval_cli_refuses_an_unknown_task_kind(tmp_path):
    from click.testing import CliRunner

    from eov_edge.cli import eval_main
    from eov_edge.core.paths import NANO_CHECKPOINT

    result = CliRunner().invoke(eval_main, ["--checkpoint", str(NANO_CHECKPOINT), "--out", str(tmp_path / "r.json"),
                                            "--task", "segmentation", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "unknown task kind" in result.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.data
def test_eval_of_chosen_tasks_records_the_decoding_mode(tmp_path, shared_data):
    import json

    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.training.evaluate import run_eval

    for grammar in (True, False):
        out = tmp_path / f"grammar-{grammar}.json"
        run_eval(NANO_CHECKPOINT, out, shared_data, per_task=2, tasks=("grounding",), slis_grammar=grammar,
                 progress=False)
        report = json.loads(out.read_text())
        assert list(report["tasks"]) == ["grounding"] and report["tasks"]["grounding"]["n"] == 2
        assert report["slis_grammar"] is grammar


@pytest.mark.data
def test_examples_without_views_are_the_same_draws(shared_data):
    from eov_edge.training.data.examples import ExampleFactory
    from eov_edge.training.evaluate import build_examples, predict

    factory = ExampleFactory(shared_data, "val", 224, 16, hit_uav_limit=20)
    tasks = ("vqa", "change", "cross_modal")
    full = build_examples(factory, 3, seed=5, tasks=tasks)
    light = build_examples(factory, 3, seed=5, tasks=tasks, with_views=False)
    assert [(e.task, e.instruction, e.answer, str(e.target)) for e in full] == [
        (e.task, e.instruction, e.answer, str(e.target)) for e in light]
    assert all(e.views for e in full) and not any(e.views or e.aux for e in light)

    class Echo:  # a processor stand-in: answers each sample with its number of views
        def answer(self, model, samples, **kwargs):
            return [type("Answer", (), {"text": str(len(s.views))}) for s in samples]

    answers = predict(None, Echo(), full, batch_size=4, progress=False, drop_views=True)
    assert answers == ["1"] * 3 + ["2"] * 6  # answered with the images, which are freed after
    assert not any(e.views for e in full)


def test_ship_verdict_calls_a_task_learned_only_when_its_interval_is_above_zero():
    from eov_edge.training.ship import verdict

    def task(model, base, low):
        return {"accuracy": model, "baseline_accuracy": base, "margin_ci95": [low, low + 0.2], "distinct_answers": 2}

    text = verdict({"tasks": {"classification": task(0.8, 0.5, 0.1), "cross_modal": task(0.55, 0.5, -0.05)}})
    clearly, rest = text.split("\n\n")
    assert "classification" in clearly and "cross_modal" not in clearly
    assert "cross_modal" in rest and "+0.050" in rest


