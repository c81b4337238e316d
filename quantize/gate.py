"""The accuracy gate: every task metric of quantized artifacts against FP32, on held-out examples.

Both artifact folders answer the same held-out examples through the device runtime: the user's own
(``--gate-data FILE.jsonl``, docs/evaluation.md) or the pack shipped in ``calib_data/heldout/``,
without any example that shares a file with the calibration samples. Each metric is compared in
points (100 x the metric, CIDEr-D included, as papers report it). A drop beyond the budget fails
the gate; a task the set lacks is not gated, and the report says so. Sensitivity for the fallback
is measured, per quantized node: the relative error of its graph's output on the calibration feeds
when that node alone is quantized.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eov_edge.core.errors import EOVError
from eov_edge.core.tasks import TASKS, answer_token_budget
from eov_edge.evaluation.examples import Example, ExampleSet
from eov_edge.quantize.calibration import CalibrationSet, QuantizeError

# "margin" (eov-eval reports, e.g. the PyTorch column of benchmarks/accuracy.py) is the headline
# metric minus its baseline: its drop is the headline metric's, already a row
NOT_METRICS = ("n", "distinct_answers", "examples", "margin")


@dataclass
class MetricRow:
    task: str
    metric: str
    fp32: float  # points
    quantized: float
    drop: float
    budget: float

    @property
    def ok(self) -> bool:
        return self.drop <= self.budget + 1e-9


def gate_set(gate_data: ExampleSet | str | Path | None, image_size: int, per_task: int | None,
             calibration: CalibrationSet) -> tuple[ExampleSet, int]:
    """The gate's held-out examples: ``gate_data`` (an example set, or a held-out JSONL file or folder;
    None: the shipped pack), at most ``per_task`` per task, without any example that shares a file
    with the calibration samples; and how many were dropped for that."""
    from eov_edge.core.paths import heldout_pack
    from eov_edge.evaluation.heldout import load_heldout

    if not isinstance(gate_data, ExampleSet):
        path = Path(gate_data) if gate_data is not None else heldout_pack()
        if gate_data is None and not path.is_file():
            raise QuantizeError(f"the held-out pack shipped with eov-edge is missing ({path}); restore it "
                                "(git checkout calib_data/heldout) or give your own: --gate-data FILE.jsonl")
        try:
            gate_data = load_heldout(path, image_size)
        except EOVError as err:
            raise QuantizeError(f"gate data: {err}") from None
    examples = gate_data.limited(per_task)
    kept, dropped = examples.without_files(calibration.sources)
    if not kept.examples:
        raise QuantizeError(f"every example of {gate_data.name} shares a file with the calibration samples: the gate "
                            "must not score what calibration saw; calibrate on other files (--calib)")
    return kept, dropped


def tasks_not_gated(examples: ExampleSet) -> list[str]:
    """The task kinds ``examples`` has no example of: the gate cannot hold them."""
    return [t for t in TASKS if t not in examples.tasks]


def answer_examples(artifacts: Path, examples: list[Example], max_new_tokens: int | None = None, batch_size: int = 8,
                    prefill_session: bool = True, verify_hashes: bool = True) -> list[str]:
    """Greedy answers of the runtime on ``artifacts`` for ``examples`` (views read batch by batch);
    ``max_new_tokens``: None gives each batch its tasks' budget (a detection answer its 96 tokens);
    ``prefill_session``: as ``Pipeline.from_artifacts`` takes it, explicit here (never a choice made
    by timing); ``verify_hashes``: False where the caller has checked (or just written) the hashes."""
    from eov_edge.core.inputs import Sample
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    texts: list[str] = []
    with Pipeline.from_artifacts(artifacts, prefill_session=prefill_session, verify_hashes=verify_hashes) as pipeline:
        size = pipeline.spec.image_size
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            generation = GenerationConfig(max_new_tokens=max_new_tokens or answer_token_budget(TASKS[e.task] for e in chunk))
            try:
                samples = [Sample(views=e.read_views(size), instruction=e.instruction) for e in chunk]
            except EOVError as err:
                raise QuantizeError(f"gate data: {err}") from None
            texts += [a.text for a in pipeline.answer_samples(samples, generation)]
    return texts


def task_points(report: dict) -> dict[tuple[str, str], float]:
    """(task, metric) -> points, for every higher-is-better metric (baselines excluded)."""
    out = {}
    for task, scores in report["tasks"].items():
        for key, value in scores.items():
            if key in NOT_METRICS or key.startswith("baseline_") or not isinstance(value, (int, float)):
                continue
            out[(task, key)] = 100.0 * float(value)
    return out


def compare(fp32: dict, quantized: dict, budget: float) -> list[MetricRow]:
    a, b = task_points(fp32), task_points(quantized)
    return [MetricRow(task, metric, round(a[(task, metric)], 3), round(b[(task, metric)], 3),
                      round(a[(task, metric)] - b[(task, metric)], 3), budget)
            for (task, metric) in a if (task, metric) in b]


def changed_answers(reference: list[str], candidate: list[str], examples: list[Example]) -> dict[str, list[int]]:
    """task -> [answers that differ between the two backends, examples]: the number of answers behind
    a metric's drop (on 100 examples one answer is 1 point; on a 42-example subset 2.4)."""
    out: dict[str, list[int]] = {}
    for a, b, example in zip(reference, candidate, examples, strict=True):
        counts = out.setdefault(example.task, [0, 0])
        counts[0] += a != b
        counts[1] += 1
    return out


def drop_intervals(task: str, metrics: list[str], reference: list[str], candidate: list[str],
                   examples: list[Example], image_size: int, resamples: int = 100,
                   seed: int = 0) -> dict[str, tuple[float, float]]:
    """metric -> 95% paired bootstrap interval of its drop in points (reference - candidate), both
    answer sets scored on the same resampled examples of ``task``. An interval that reaches 0 says
    the drop is within what re-drawing the examples moves it by: a larger ``--per-task`` tells a
    real loss from the luck of the draw (coordinates that move by a bin under any quantization turn
    a few boxes into hits or misses either way). Baselines are not scored (a caption resample costs
    two CIDEr-D passes instead of four)."""
    import random

    from eov_edge.evaluation.scoring import score

    idx = [i for i, e in enumerate(examples) if e.task == task]
    rng = random.Random(seed)
    drops: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(resamples):
        pick = [idx[rng.randrange(len(idx))] for _ in idx]
        chosen = [examples[i] for i in pick]
        a = score(task, [reference[i] for i in pick], chosen, [], image_size, baselines=False)
        b = score(task, [candidate[i] for i in pick], chosen, [], image_size, baselines=False)
        for m in metrics:
            drops[m].append(100.0 * (float(a[m]) - float(b[m])))
    out = {}
    for m, values in drops.items():
        values.sort()
        out[m] = (round(values[int(0.025 * (resamples - 1))], 3), round(values[int(round(0.975 * (resamples - 1)))], 3))
    return out


def broken_tasks(rows: list[MetricRow]) -> list[str]:
    return sorted({r.task for r in rows if not r.ok})


def table(rows: list[MetricRow]) -> str:
    lines = ["| task | metric | FP32 | quantized | drop (points) | budget | ok |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.metric} | {r.fp32:.2f} | {r.quantized:.2f} | {r.drop:+.2f} | {r.budget:.1f} | "
              f"{'yes' if r.ok else 'NO'} |" for r in rows]
    return "\n".join(lines)


def rows_as_dicts(rows: list[MetricRow]) -> list[dict]:
    return [dict(asdict(r), ok=r.ok) for r in rows]


def output_error(reference_path: Path, candidate_path: Path, feeds: list[dict], max_feeds: int = 24) -> float:
    """Mean relative L2 error of the first output of ``candidate`` against ``reference`` on ``feeds``."""
    import onnxruntime as ort

    from eov_edge.runtime.ort_runner import session_options

    chosen = feeds if len(feeds) <= max_feeds else [feeds[i] for i in
                                                    np.linspace(0, len(feeds) - 1, max_feeds).astype(int)]
    ref = ort.InferenceSession(str(reference_path), session_options(), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(str(candidate_path), session_options(), providers=["CPUExecutionProvider"])
    errors = []
    for feed in chosen:
        a = ref.run(None, feed)[0]
        b = cand.run(None, feed)[0]
        errors.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)))
    return float(np.mean(errors))


__all__ = ["MetricRow", "answer_examples", "broken_tasks", "changed_answers", "compare", "gate_set",
           "output_error", "tasks_not_gated"]
