"""The PyTorch reference model's answers to held-out examples, scored per task beside baselines.

    eov-eval --checkpoint DIR --data held_out.jsonl --out report.json

Examples come from any example set (:mod:`eov_edge.evaluation`): the user's JSONL held-out file,
the shipped pack, or (:func:`data_folder_set`) the val split of the project's data folder, fixed
by the seed (docs/data.md), with baselines fitted on the train split. Each metric is reported
beside a baseline that ignores the image, and the number of distinct answers shows whether the
model answers from the image at all.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from eov_edge.core.paths import write_json_atomic
from eov_edge.core.tasks import TASKS, answer_token_budget
from eov_edge.evaluation.examples import Example, ExampleSet
from eov_edge.evaluation.scoring import add_margins, score_predictions
from eov_edge.training.data.examples import ExampleFactory

EVAL_SEED = 1000


def build_examples(factory: ExampleFactory, per_task: int, seed: int, tasks=tuple(TASKS),
                   with_views: bool = True) -> list[Example]:
    """``per_task`` examples of each task, drawn in task order from one generator seeded ``seed``.

    ``with_views=False`` drops each example's images once drawn (the same draws: the generator
    does not see it): what a baseline fitted on answers and targets needs, at ~1/1000 of the memory
    (a view is a 16-slot float32 canvas, 3.2 MB at 224 px).
    """
    rng = random.Random(seed)
    examples = []
    for task in tasks:
        for _ in range(per_task):
            example = factory.sample(task, rng)
            if not with_views:
                _drop_images(example)
            examples.append(example)
    return examples


def predict(model, processor, examples: list[Example], batch_size: int = 16, max_new_tokens: int | None = None,
            progress: bool = True, slis_grammar: bool = True, drop_views: bool = False) -> list[str]:
    """Greedy answers for ``examples``; ``max_new_tokens`` None: each batch its tasks' budget (as the
    runtime and the gate give them); ``drop_views``: free each batch's images once answered."""
    from tqdm import tqdm

    from eov_edge.core.inputs import Sample

    predictions: list[str] = []
    for i in tqdm(range(0, len(examples), batch_size), desc="eval", disable=not progress, mininterval=5):
        chunk = examples[i : i + batch_size]
        answers = processor.answer(model, [Sample(views=e.views or e.read_views(model.config.image_size),
                                                  instruction=e.instruction) for e in chunk],
                                   max_new_tokens=max_new_tokens or answer_token_budget(TASKS[e.task] for e in chunk),
                                   slis_grammar=slis_grammar)
        predictions += [a.text for a in answers]
        if drop_views:
            for example in chunk:
                _drop_images(example)
    return predictions


def _drop_images(example: Example) -> None:
    """Free an example's views and dense targets (its answer and metric targets stay)."""
    example.views, example.aux = [], []


def evaluate(model, processor, examples: list[Example], train_examples: list[Example], batch_size: int = 16,
             max_new_tokens: int | None = None, progress: bool = True, slis_grammar: bool = True,
             drop_views: bool = False) -> dict:
    """Greedy answers for ``examples`` and the per-task report (``slis_grammar``: constrained
    decoding of spatial answers, :mod:`eov_edge.core.slis_grammar`; ``drop_views``: see :func:`predict`)."""
    started = time.time()
    predictions = predict(model, processor, examples, batch_size, max_new_tokens, progress, slis_grammar, drop_views)
    report = score_predictions(predictions, examples, train_examples, model.config.image_size)
    add_margins(report, predictions, examples, train_examples, model.config.image_size)
    report["seconds"] = round(time.time() - started, 1)
    report["slis_grammar"] = slis_grammar
    return report


def data_folder_set(data_root: Path, image_size: int, patch_size: int, per_task: int, seed: int = EVAL_SEED,
                    tasks: tuple[str, ...] = tuple(TASKS), baseline_factor: int = 4) -> ExampleSet:
    """The val split of the project's data folder as an example set: ``per_task`` examples of each
    task fixed by ``seed``, baselines fitted on ``baseline_factor`` x as many train examples (their
    answers only: views dropped once drawn)."""
    val = build_examples(ExampleFactory(data_root, "val", image_size, patch_size), per_task, seed, tasks)
    train = build_examples(ExampleFactory(data_root, "train", image_size, patch_size), baseline_factor * per_task,
                           seed + 1, tasks, with_views=False)
    return ExampleSet(val, train, f"data folder {data_root} (val split)",
                      {"data_root": str(data_root), "split": "val", "per_task": per_task, "seed": seed})


def run_eval(checkpoint: Path, out: Path, examples: ExampleSet | Path, per_task: int = 256, seed: int = EVAL_SEED,
             progress: bool = True, tasks: tuple[str, ...] = tuple(TASKS), slis_grammar: bool = True) -> dict:
    """Evaluate a checkpoint on an example set (or on the val split of a data folder: ``per_task``,
    ``seed`` and ``tasks`` pick its examples) and write ``out`` (JSON) and ``out`` with .md."""
    import torch

    from eov_edge.evaluation.scoring import markdown
    from eov_edge.model.processor import load_checkpoint

    torch.set_num_threads(int(os.environ.get("EOV_THREADS", "2")))
    model, processor = load_checkpoint(checkpoint)
    if not isinstance(examples, ExampleSet):
        # Images are freed as soon as they are answered (training examples: at once, the baselines
        # read answers only): at 256 per task, keeping them all took ~20 GB.
        examples = data_folder_set(Path(examples), model.config.image_size, model.config.vision_config.patch_size,
                                   per_task, seed, tasks)
    report = evaluate(model, processor, examples.examples, examples.baseline_examples, progress=progress,
                      slis_grammar=slis_grammar, drop_views=True)
    report.update({"checkpoint": str(checkpoint), "examples_from": examples.name, **examples.provenance})
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown(report))
    return report
