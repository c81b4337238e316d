"""Scores of answers against held-out examples, per task, beside an image-blind baseline.

One scorer for every backend (PyTorch, the ONNX runtime, quantized artifacts) and every example
set (the user's JSONL, the shipped pack, the project's data folder): ``eov-eval``, the
quantization gate and the benchmarks all call :func:`score_predictions`. Metrics per task are in
docs/evaluation.md; each is reported beside a baseline that ignores the image, fitted on the
set's baseline examples (the majority answer, the mean box, the most common caption).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter

from eov_edge.core import metrics, slis
from eov_edge.core.tasks import HEADLINE_METRICS
from eov_edge.evaluation.examples import Example

BOOTSTRAP_RESAMPLES = 200


def well_formed(text: str) -> bool:
    """Every shape of ``text`` parses, a last one left open excepted: only the token budget leaves a
    shape open (decoding is grammar-constrained), and where the budget falls is not the model's
    grammar (the runtime reports such answers as cut, not malformed)."""
    return not slis.problems_before_cut(slis.parse(text).problems)


def _first_box(text: str, size: int) -> metrics.Box | None:
    boxes = [o for o in slis.parse(text).objects if o.kind == "box"]
    return None if not boxes else boxes[0].box(size, size)


def _objects(text: str, size: int) -> list[tuple[str, metrics.Box]]:
    """(label, box in canvas pixels) of every box in ``text``; SLIS bins map to the canvas size."""
    return [(o.label or "", o.box(size, size)) for o in slis.parse(text).objects if o.kind == "box"]


def _mean_box(examples: list[Example], key) -> metrics.Box:
    boxes = [b for e in examples for b in key(e)]
    return tuple(statistics.fmean(b[i] for b in boxes) for i in range(4)) if boxes else (0, 0, 1, 1)


def score(task: str, preds: list[str], examples: list[Example], train: list[Example], size: int,
          baselines: bool = True) -> dict:
    """Metrics of ``preds`` and (``baselines``) of the image-blind baseline fitted on ``train`` examples."""
    targets = [e.answer for e in examples]
    majority = Counter(e.answer for e in train).most_common(1)[0][0] if train else ""
    out: dict = {"n": len(examples), "distinct_answers": len(set(preds)),
                 "well_formed": sum(well_formed(p) for p in preds) / max(1, len(preds))}
    if task in ("classification", "cross_modal"):
        out["accuracy"] = metrics.accuracy(preds, targets)
        if baselines:
            out["baseline_accuracy"] = metrics.accuracy([majority] * len(targets), targets)
    elif task == "multilabel":
        split = lambda t: [x for x in t.split("; ") if x]  # noqa: E731
        out.update(metrics.multilabel_scores([split(p) for p in preds], [split(t) for t in targets]))
        if baselines:
            base = metrics.multilabel_scores([split(majority)] * len(targets), [split(t) for t in targets])
            out.update({f"baseline_{k}": v for k, v in base.items()})
    elif task == "caption":
        refs = [e.target["references"] for e in examples]
        out["bleu4"], out["cider_d"] = metrics.bleu4(preds, refs), metrics.cider_d(preds, refs)
        if baselines:
            out["baseline_bleu4"] = metrics.bleu4([majority] * len(refs), refs)
            out["baseline_cider_d"] = metrics.cider_d([majority] * len(refs), refs)
    elif task == "vqa":
        out["accuracy"] = metrics.accuracy(preds, targets)
        by_question: dict[str, Counter] = {}
        for t in train:
            by_question.setdefault(t.instruction, Counter())[t.answer] += 1
        # majority answer of the same question in training
        base = [by_question[e.instruction].most_common(1)[0][0] if e.instruction in by_question else majority
                for e in examples]
        if baselines:
            out["baseline_accuracy"] = metrics.accuracy(base, targets)
        for kind in ("count", "presence"):
            idx = [i for i, e in enumerate(examples) if e.target["kind"] == kind]
            out[f"{kind}_accuracy"] = metrics.accuracy([preds[i] for i in idx], [targets[i] for i in idx])
            if baselines:
                out[f"baseline_{kind}_accuracy"] = metrics.accuracy([base[i] for i in idx], [targets[i] for i in idx])
    elif task == "grounding":
        gt = [e.target["box"] for e in examples]
        out.update(metrics.grounding_scores([_first_box(p, size) for p in preds], gt))
        if baselines:
            mean = _mean_box(train, lambda e: [e.target["box"]])
            base = metrics.grounding_scores([mean] * len(gt), gt)
            out.update({f"baseline_{k}": v for k, v in base.items()})
    elif task == "detection":
        gt = [e.target["objects"] for e in examples]
        out.update(metrics.detection_scores([_objects(p, size) for p in preds], gt))
        if baselines:
            mean = _mean_box(train, lambda e: [b for _, b in e.target["objects"]])
            labels = Counter(lab for e in train for lab, _ in e.target["objects"])
            label = labels.most_common(1)[0][0] if labels else ""
            base = metrics.detection_scores([[(label, mean)]] * len(gt), gt)
            out.update({f"baseline_{k}": v for k, v in base.items()})
        centre = [metrics.grounding_scores([b for _, b in _objects(p, size)][:1] or [None], [g[0][1]])["centre_hit"]
                  for p, g in zip(preds, gt) if g]
        out["first_box_centre_hit"] = sum(centre) / max(1, len(centre))
    elif task == "change":
        said = [p.split()[0] if p.split() else "" for p in preds]
        truth = ["yes" if e.target["changed"] else "no" for e in examples]
        out["accuracy"] = metrics.accuracy(said, truth)
        det = metrics.detection_scores([_objects(p, size) for p in preds], [e.target["boxes"] for e in examples])
        out["box_f1"] = det["f1"]
        if baselines:
            base_word = Counter("yes" if e.target["changed"] else "no" for e in train).most_common(1)[0][0]
            out["baseline_accuracy"] = metrics.accuracy([base_word] * len(truth), truth)
            out["baseline_box_f1"] = 0.0  # a baseline that never localizes
    elif task == "temporal":
        idx = [i for i, e in enumerate(examples) if e.target["kind"] == "direction"]
        train_dirs = Counter(e.target["direction"] for e in train if e.target["kind"] == "direction")
        out["direction_accuracy"] = metrics.accuracy([preds[i] for i in idx], [targets[i] for i in idx])
        # With too few training examples to have a direction question, the baseline guesses "north".
        majority = train_dirs.most_common(1)[0][0] if train_dirs else "north"
        if baselines:
            out["baseline_direction_accuracy"] = metrics.accuracy([majority] * len(idx), [targets[i] for i in idx])
        track = [i for i, e in enumerate(examples) if e.target["kind"] == "track"]
        pred_boxes, gt_boxes = [], []
        for i in track:
            by_view = {o.view: o.box(size, size) for o in slis.parse(preds[i]).objects if o.kind == "box"}
            for t, (_, box) in enumerate(examples[i].target["boxes"]):
                pred_boxes.append(by_view.get(t))
                gt_boxes.append(box)
        track_scores = metrics.grounding_scores(pred_boxes, gt_boxes)
        out["track_p@0.5"], out["track_mean_iou"] = track_scores["p@0.5"], track_scores["mean_iou"]
        if baselines:
            mean = _mean_box(train, lambda e: [b for _, b in e.target["boxes"]] if e.target["kind"] == "track" else [])
            base = metrics.grounding_scores([mean] * len(gt_boxes), gt_boxes)
            out["baseline_track_p@0.5"], out["baseline_track_mean_iou"] = base["p@0.5"], base["mean_iou"]
    return out


def margin_interval(task: str, preds: list[str], examples: list[Example], train: list[Example], size: int,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of (model - baseline) on the task's headline metric: both are
    scored on the same resampled examples, so the interval says whether the margin is more than
    the luck of which examples were drawn."""
    metric = HEADLINE_METRICS[task]
    rng = random.Random(seed)
    margins = []
    for _ in range(resamples):
        idx = [rng.randrange(len(examples)) for _ in examples]
        scores = score(task, [preds[i] for i in idx], [examples[i] for i in idx], train, size)
        margins.append(scores[metric] - scores[f"baseline_{metric}"])
    margins.sort()
    return margins[int(0.025 * (resamples - 1))], margins[int(round(0.975 * (resamples - 1)))]


def _by_task(predictions: list[str], examples: list[Example], train_examples: list[Example]):
    """(task, indices, its predictions, its examples, its training examples) per task, in order."""
    for task in dict.fromkeys(e.task for e in examples):
        idx = [i for i, e in enumerate(examples) if e.task == task]
        yield (task, idx, [predictions[i] for i in idx], [examples[i] for i in idx],
               [e for e in train_examples if e.task == task])


def score_predictions(predictions: list[str], examples: list[Example], train_examples: list[Example],
                      image_size: int) -> dict:
    """The per-task report for answers to ``examples`` (any backend: PyTorch, the ONNX runtime, ...)."""
    report: dict = {"tasks": {}}
    for task, idx, task_preds, task_examples, train in _by_task(predictions, examples, train_examples):
        report["tasks"][task] = score(task, task_preds, task_examples, train, image_size)
        report["tasks"][task]["examples"] = [
            {"instruction": examples[i].instruction, "answer": examples[i].answer, "prediction": predictions[i]}
            for i in idx[:3]
        ]
    return report


def add_margins(report: dict, predictions: list[str], examples: list[Example], train_examples: list[Example],
                image_size: int) -> None:
    """Each task's margin over its baseline on the headline metric and its 95% bootstrap interval,
    into ``report`` (the model-vs-baseline reports of eov-eval; backend comparisons such as the
    quantization gate do not need them and skip the resampling)."""
    for task, _, task_preds, task_examples, train in _by_task(predictions, examples, train_examples):
        if task not in HEADLINE_METRICS:
            continue
        scores, metric = report["tasks"][task], HEADLINE_METRICS[task]
        scores["headline"] = metric
        scores["margin"] = scores[metric] - scores[f"baseline_{metric}"]
        scores["margin_ci95"] = list(margin_interval(task, task_preds, task_examples, train, image_size))


SKIPPED_KEYS = ("n", "distinct_answers", "examples", "well_formed", "headline", "margin", "margin_ci95")


def markdown(report: dict) -> str:
    lines = ["| task | n | metric | model | baseline | distinct answers |", "|---|---|---|---|---|---|"]
    for task, scores in report["tasks"].items():
        for key, value in scores.items():
            if key.startswith("baseline_") or key in SKIPPED_KEYS:
                continue
            base = scores.get(f"baseline_{key}")
            base_text = f"{base:.3f}" if isinstance(base, float) else "-"
            lines.append(f"| {task} | {scores['n']} | {key} | {value:.3f} | {base_text} | {scores['distinct_answers']} |")
    lines += ["", "Margin over the baseline on each task's headline metric, with its 95% paired bootstrap interval "
              f"({BOOTSTRAP_RESAMPLES} resamples of the examples):", "",
              "| task | metric | margin | 95% interval | clearly above |", "|---|---|---|---|---|"]
    for task, scores in report["tasks"].items():
        if "margin" in scores:
            low, high = scores["margin_ci95"]
            lines.append(f"| {task} | {scores['headline']} | {scores['margin']:+.3f} | [{low:+.3f}, {high:+.3f}] | "
                         f"{'yes' if low > 0 else 'no'} |")
    return "\n".join(lines) + "\n"
