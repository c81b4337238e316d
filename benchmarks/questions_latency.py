"""Several questions about one sample: asked one by one against asked together (views encoded once,
one decoder batch), same runtime, same run.

    python benchmarks/questions_latency.py --artifacts artifacts/nano --report FILE

For every single-view calib_data sample, the tasks its views allow (and ``--max-new-tokens``, greedy):
``--rounds`` interleaved rounds (every other one in reverse order) time the questions asked one by
one (``Pipeline.answer``) and together (``Pipeline.answer_questions``); the ratio is paired within a
round, the median reported, and the tokens compared. The shared prefix is prefilled once per
question on both sides: this measures encoding once and batching, not prefix reuse.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    import onnxruntime

    from eov_edge.core.calib import load_calib_samples
    from eov_edge.core.provenance import git_commit
    from eov_edge.core.tasks import TASKS
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    pipeline = Pipeline.from_artifacts(args.artifacts, thread_pool="shared")
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    cases = []
    for sample in load_calib_samples():
        views = sample.read(size=pipeline.spec.image_size)
        if len(views) == 1:
            cases.append((sample.id, views, [t for t, spec in TASKS.items() if spec.min_views <= 1]))
    pipeline.answer_questions(cases[0][1], [(t, None) for t in cases[0][2]], generation)  # warm-up

    def alone(views, tasks):
        return [pipeline.answer(views, task=t, generation=generation)[0] for t in tasks]

    def together(views, tasks):
        return pipeline.answer_questions(views, [(t, None) for t in tasks], generation)

    ratios, seconds = [], {"alone": [], "together": []}
    identical = True
    for round_index in range(args.rounds):
        order = [("alone", alone), ("together", together)]
        if round_index % 2:
            order.reverse()
        spent = {}
        for name, run in order:
            start = time.perf_counter()
            answers = [run(views, tasks) for _, views, tasks in cases]
            spent[name] = time.perf_counter() - start
            if name == "alone":
                reference = answers
            else:
                produced = answers
        identical &= all(a.token_ids == b.token_ids for x, y in zip(reference, produced) for a, b in zip(x, y))
        ratios.append(spent["alone"] / spent["together"])
        for name, value in spent.items():
            seconds[name].append(value)
    questions = sum(len(tasks) for _, _, tasks in cases)
    report = {
        "artifacts": str(args.artifacts), "samples": len(cases), "questions": questions,
        "questions_per_sample": len(cases[0][2]), "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
        "alone_s": round(statistics.median(seconds["alone"]), 3),
        "together_s": round(statistics.median(seconds["together"]), 3),
        "together_speedup": round(statistics.median(ratios), 2), "speedup_rounds": [round(r, 2) for r in ratios],
        "tokens_identical": identical, "git_commit": git_commit(), "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
