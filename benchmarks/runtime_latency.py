"""Runtime (numpy + ONNX Runtime, FP32 graphs) against PyTorch eager ``generate()``, same inputs, same run.

    python benchmarks/runtime_latency.py --artifacts artifacts/nano --report benchmarks/results/runtime_nano_cpu.json

For every calib_data sample (its task's default question, greedy, ``--max-new-tokens``) and for one
batch of all samples, both sides start from the same model-ready arrays; the script reports the
median of ``--repeats`` timed runs after one warm-up, the ratio PyTorch / runtime, time to first
token, decode tokens/s, and whether the tokens are identical. "End to end" adds reading the files
and building the prompt (shared code, the same on both sides). Peak memory is measured in separate
processes so one side's allocations do not hide the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEAK_SCRIPT = """
import json, sys
side, artifacts, max_new, pool = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
from eov_edge.core.calib import calib_questions

if side == "pytorch":
    import torch
    from eov_edge.model.processor import load_checkpoint
    from eov_edge.core.paths import NANO_CHECKPOINT
    model, processor = load_checkpoint(NANO_CHECKPOINT)
    samples = [s for _, s in calib_questions(model.config.image_size)]
    with torch.no_grad():
        for s in samples:
            model.generate(**processor([s], max_new_tokens=max_new), max_new_tokens=max_new)
else:
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.from_artifacts(artifacts, thread_pool=pool)
    assert "torch" not in sys.modules
    samples = [s for _, s in calib_questions(pipe.spec.image_size)]
    for s in samples:
        pipe.generate_ids(pipe.batch([s], max_new), GenerationConfig(max_new_tokens=max_new))
from eov_edge.runtime.pipeline import peak_rss_mb
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
"""


def median_time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="eov-export onnx output of the checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped nano checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--thread-pool", choices=["shared", "session"], default="shared",
                        help="ONNX Runtime thread pools: one shared (what eov-run uses) or one per session")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()

    import onnxruntime
    import torch

    from eov_edge.core.calib import calib_questions
    from eov_edge.core.paths import NANO_CHECKPOINT, write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.model.processor import load_checkpoint
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    threads = os.cpu_count() or 2
    torch.set_num_threads(threads)
    checkpoint = args.checkpoint or NANO_CHECKPOINT
    model, processor = load_checkpoint(checkpoint)  # fp32, PyTorch's default (SDPA) attention
    pipe = Pipeline.from_artifacts(args.artifacts, threads=threads, thread_pool=args.thread_pool)
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens)
    calib = calib_questions(model.config.image_size)

    def pytorch(samples):
        with torch.no_grad():
            out = model.generate(**processor(samples, max_new_tokens=args.max_new_tokens),
                                 max_new_tokens=args.max_new_tokens)
        return [processor.decode(row.tolist()).token_ids for row in out]

    def runtime(samples):
        ids, _ = pipe.generate_ids(pipe.batch(samples, args.max_new_tokens), greedy)
        return [processor.decode(row.tolist()).token_ids for row in ids]

    def first_token(samples):  # prefill only: time to first token
        ids, _ = pipe.generate_ids(pipe.batch(samples, 1), GenerationConfig(max_new_tokens=1))
        return ids

    def pytorch_first_token(samples):
        with torch.no_grad():
            return model.generate(**processor(samples, max_new_tokens=1), max_new_tokens=1)

    rows = []
    cases = [(sample_id, [sample]) for sample_id, sample in calib] + [("batch of all", [s for _, s in calib])]

    def quiet():  # let the other side's worker threads stop spinning before timing this side
        time.sleep(0.2)

    for label, samples in cases:
        quiet()
        t_torch, tokens_torch = median_time(lambda: pytorch(samples), args.repeats)
        ttft_torch, _ = median_time(lambda: pytorch_first_token(samples), args.repeats)
        quiet()
        t_rt, tokens_rt = median_time(lambda: runtime(samples), args.repeats)
        ttft_rt, _ = median_time(lambda: first_token(samples), args.repeats)
        new_tokens = sum(len(t) + 1 for t in tokens_rt)  # + EOS where it ended
        rows.append({
            "case": label, "samples": len(samples), "new_tokens": new_tokens,
            "pytorch_s": round(t_torch, 5), "runtime_s": round(t_rt, 5), "speedup": round(t_torch / t_rt, 3),
            "ttft_pytorch_s": round(ttft_torch, 5), "ttft_runtime_s": round(ttft_rt, 5),
            "decode_tokens_per_s_runtime": (round((new_tokens - len(samples)) / (t_rt - ttft_rt), 1)
                                            if new_tokens > 2 * len(samples) and t_rt > ttft_rt else None),
            "token_identical": tokens_torch == tokens_rt,
        })
        print(json.dumps(rows[-1]), flush=True)

    # End to end from the files: read + prompt + generate + decode text, every sample one by one.
    from eov_edge.core.calib import load_calib_samples

    entries = load_calib_samples()
    size = model.config.image_size

    def end_to_end(answer_fn):
        def run():
            texts = []
            for entry in entries:
                sample = entry.as_sample(size)
                texts.append(answer_fn(sample))
            return texts
        return run

    quiet()
    e2e_torch, texts_torch = median_time(end_to_end(lambda s: processor.tokenizer.decode(pytorch([s])[0])),
                                         args.repeats)
    quiet()
    e2e_rt, texts_rt = median_time(end_to_end(lambda s: processor.tokenizer.decode(runtime([s])[0])), args.repeats)

    peaks = {}
    for side in ("pytorch", "runtime"):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, side, str(args.artifacts), str(args.max_new_tokens),
                              args.thread_pool],
                             capture_output=True, text=True, check=True)
        peaks[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]

    singles = [r for r in rows if r["samples"] == 1]
    report = {
        "what": "runtime (numpy + ONNX Runtime, FP32) vs PyTorch eager generate(), greedy, same inputs",
        "machine": {"cpu_threads": threads, "ort_thread_pool": args.thread_pool, "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "providers": ["CPUExecutionProvider"]},
        "checkpoint": str(checkpoint), "artifacts": str(args.artifacts), "git_commit": git_commit(),
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
        "cases": rows,
        "summary": {
            "single_sample_speedup_median": round(statistics.median(r["speedup"] for r in singles), 3),
            "single_sample_speedup_min": round(min(r["speedup"] for r in singles), 3),
            "batch_speedup": rows[-1]["speedup"],
            "end_to_end_pytorch_s": round(e2e_torch, 4), "end_to_end_runtime_s": round(e2e_rt, 4),
            "end_to_end_speedup": round(e2e_torch / e2e_rt, 3),
            "end_to_end_texts_identical": texts_torch == texts_rt,
            "token_identical_cases": f"{sum(r['token_identical'] for r in rows)}/{len(rows)}",
            "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
        },
    }
    write_json_atomic(args.report, report)
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
