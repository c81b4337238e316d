"""Host time per decode step of the runtime's loop, beside the graph call it wraps.

    python benchmarks/decode_loop_overhead.py --artifacts runs/bench/small-b1/artifacts/ort-cpu-int4

A 200-token random prompt, exactly ``--new-tokens`` greedy tokens (EOS suppressed, no grammar: the
loop of ``eov-bench``'s head to head), with and without per-token probabilities, interleaved over
``--rounds``. For each: ms per decode step of the whole loop, ms of the bound decoder call alone
(the runner's own timings around ``run_with_iobinding``), and their difference: the Python and numpy
work of a step (choose the token, look up its embedding, advance the counters, the generator).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--report", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    import numpy as np

    from eov_edge.core import manifest as mf
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    pipe = Pipeline.from_artifacts(args.artifacts, thread_pool="shared")
    runner = pipe.runners[mf.DECODER]
    ids = np.random.default_rng(0).integers(8, len(pipe.embed_table), size=(1, args.prompt_tokens))
    mask = np.ones(ids.shape, np.int64)
    steps = args.new_tokens - 1
    configs = {
        "with probabilities": GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                               slis_grammar=False),
        "without probabilities": GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                  slis_grammar=False, output_scores=False),
    }

    def decode(config: GenerationConfig) -> tuple[float, float]:
        """(loop ms, graph-call ms) per decode step, the first token (prefill) excluded."""
        loop = pipe.decoder.steps(pipe.embed_table[ids].astype(np.float32), mask, config)
        next(loop)
        calls = len(runner.timings)
        start = time.perf_counter()
        for _ in loop:
            pass
        total = time.perf_counter() - start
        return 1000 * total / steps, 1000 * sum(runner.timings[calls:]) / steps

    for config in configs.values():
        decode(config)  # warm-up
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, config in configs.items():
            measured[name].append(decode(config))
    import platform

    import onnxruntime

    from eov_edge.core.provenance import git_commit

    report = {"artifacts": str(args.artifacts), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "rounds": args.rounds, "git_commit": git_commit(), "onnxruntime": onnxruntime.__version__,
              "numpy": np.__version__, "python": platform.python_version(), "rows": {}}
    for name, runs in measured.items():
        loop_ms = statistics.median(r[0] for r in runs)
        call_ms = statistics.median(r[1] for r in runs)
        host_us = statistics.median(1000 * (r[0] - r[1]) for r in runs)
        report["rows"][name] = {"loop_ms_per_step": round(loop_ms, 3), "graph_call_ms_per_step": round(call_ms, 3),
                                "host_us_per_step": round(host_us, 1)}
        print(f"{name}: loop {loop_ms:.3f} ms/step, graph call {call_ms:.3f} ms, host work {host_us:.0f} us")
    if args.report:
        from eov_edge.core.paths import write_json_atomic

        write_json_atomic(args.report, report)
    return report


if __name__ == "__main__":
    main()
