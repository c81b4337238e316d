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
    parser.add_argument("--gguf", default=None, help="decode on llama.cpp from the artifacts' GGUF of this type")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from eov_edge.core import manifest as mf
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    backend = {"decoder_backend": "llamacpp", "gguf": args.gguf, "prefill": "llamacpp"} if args.gguf else {}
    pipe = Pipeline.from_artifacts(args.artifacts, thread_pool="shared", threads=args.threads, **backend)
    runner = pipe.llama if args.gguf else pipe.runners[mf.DECODER]  # whose .timings are the decoder calls
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

    runs_of = {name: (lambda config=config: decode(config)) for name, config in configs.items()}
    if args.gguf:
        runs_of["llama.cpp's own loop"] = llamacpp_loop(pipe, pipe.embed_table[ids].astype(np.float32)[0], steps)
    for run in runs_of.values():
        run()  # warm-up
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs_of}
    for _ in range(args.rounds):
        for name, run in runs_of.items():
            measured[name].append(run())
    import platform

    import onnxruntime

    from eov_edge.core.provenance import git_commit

    report = {"artifacts": str(args.artifacts), "gguf": args.gguf, "threads": args.threads,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
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


def llamacpp_loop(pipe, embeds, steps: int):
    """llama.cpp's own greedy loop (eov-bench's llama.cpp rows: :class:`LlamaCppDecoder`'s sampler
    chain) on ``pipe``'s llama.cpp session: a call returning (loop ms, llama_decode ms) per step after
    the prompt ``embeds`` (S, D), as :func:`main`'s ``decode`` does for ours."""
    from eov_edge.bench.llamacpp_decoder import LlamaCppDecoder

    peer = LlamaCppDecoder(None, steps + 1, 0, pipe.manifest.special_tokens["eos"], False, 0, session=pipe.llama)
    lc, context, token = peer.lc, peer.session.context, peer.token

    def run() -> tuple[float, float]:
        peer.session.feed_prompt(embeds)
        lc.llama_sampler_reset(peer.sampler)
        token[0] = lc.llama_sampler_sample(peer.sampler, context, -1)
        calls = []
        start = time.perf_counter()
        for _ in range(steps):
            called = time.perf_counter()
            if lc.llama_decode(context, lc.llama_batch_get_one(token, 1)) != 0:
                raise RuntimeError("llama_decode failed")
            calls.append(time.perf_counter() - called)
            token[0] = lc.llama_sampler_sample(peer.sampler, context, -1)
        return 1000 * (time.perf_counter() - start) / steps, 1000 * sum(calls) / steps

    return run


if __name__ == "__main__":
    main()
