"""How often a quantized draft's tokens are kept by the FP32 decoder, per task, on held-out real data.

    python benchmarks/speculative_acceptance.py --artifacts artifacts/nano-fused \
        --draft artifacts/nano-int8 --draft artifacts/nano-int4 --per-task 16 \
        --report benchmarks/results/speculative_nano.json

Speculative decoding (``eov-run --draft``) returns the FP32 answer whatever the draft proposes; its
speed is set by the acceptance (drafted tokens the FP32 decoder keeps) and by how much cheaper a
draft step is than an FP32 step. ``eov-bench``'s small preset has random weights whose answer
repeats one token (every draft is kept), so this measures the acceptance a trained model gives:
the shipped nano's val examples (the quantization gate's, minus calib_data files), one at a time
(batch 1, greedy, the gate's 64 new tokens). For each task and draft: answers identical to the
plain FP32 loop, acceptance, tokens per FP32 decoder call, and both loops' decode time (nano's
steps are dispatch-bound, so a draft step costs about as much as an FP32 step there: the times
show the bookkeeping, the acceptance is the transferable figure).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="FP32 artifacts, --decoder ort-cpu")
    parser.add_argument("--draft", type=Path, action="append", required=True, help="quantized artifacts (repeatable)")
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--per-task", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime

    from eov_edge.bench.held_out import benchmark_set
    from eov_edge.core import manifest as mf
    from eov_edge.core.calib import load_calib_samples
    from eov_edge.core.inputs import Sample
    from eov_edge.core.paths import write_atomic, write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.quantize.calibration import CalibrationSet
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    manifest = mf.load_manifest(args.artifacts)
    calib_files = CalibrationSet(sources=[str(p) for c in load_calib_samples() for files in c.views for p in files])
    patch = int(manifest.model_config.get("vision_config", {}).get("patch_size", 16))
    examples = benchmark_set(manifest.image_size, patch, args.per_task, calib_files.sources)[0].examples
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    plain = Pipeline.from_artifacts(args.artifacts, thread_pool="shared")
    drafts = {}
    for folder in args.draft:
        recipe = (mf.load_manifest(folder).quantization or {}).get("recipe", folder.name)
        drafts[recipe] = Pipeline.from_artifacts(args.artifacts, thread_pool="shared", draft=folder,
                                                 draft_tokens=args.draft_tokens)

    def timed(pipe, batch):
        embeds = pipe.inputs_embeds(batch)  # the same prompt both ways; only the decoding is timed
        start = time.perf_counter()
        ids, _ = pipe.decoder.generate(embeds, batch["attention_mask"], config)
        return ids, time.perf_counter() - start

    per_task: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for example in examples:
        sample = Sample(views=example.read_views(manifest.image_size), instruction=example.instruction)
        batch = plain.batch([sample], config.max_new_tokens)
        reference, plain_s = timed(plain, batch)
        for recipe, pipe in drafts.items():
            ids, seconds = timed(pipe, batch)
            stats = pipe.decoder.last_stats
            row = per_task[example.task][recipe]
            row["examples"] += 1
            row["identical"] += int(ids.shape == reference.shape and bool(np.all(ids == reference)))
            row["tokens"] += reference.shape[1]
            row["fp32_calls"] += stats.rounds + 1
            row["drafted"] += stats.drafted
            row["accepted"] += stats.accepted
            row["plain_ms"] += 1000 * plain_s
            row["speculative_ms"] += 1000 * seconds
    tasks = {}
    for task, by_recipe in per_task.items():
        tasks[task] = {}
        for recipe, r in by_recipe.items():
            tasks[task][recipe] = {
                "examples": int(r["examples"]), "identical_answers": int(r["identical"]),
                "acceptance": round(r["accepted"] / r["drafted"], 4) if r["drafted"] else None,
                "tokens_per_fp32_call": round(r["tokens"] / r["fp32_calls"], 3),
                "mean_tokens": round(r["tokens"] / r["examples"], 1),
                "plain_ms": round(r["plain_ms"] / r["examples"], 2),
                "speculative_ms": round(r["speculative_ms"] / r["examples"], 2)}
    report = {"artifacts": str(args.artifacts), "drafts": {k: str(p) for k, p in zip(drafts, args.draft)},
              "draft_tokens": args.draft_tokens, "per_task": args.per_task, "max_new_tokens": args.max_new_tokens,
              "git_commit": git_commit(), "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
              "tasks": tasks}
    write_json_atomic(args.report, report)
    lines = [f"# Draft acceptance, {args.artifacts.name}, up to {args.draft_tokens} drafted per FP32 call", "",
             "| task | draft | answers = FP32 loop | acceptance | tokens per FP32 call | mean tokens | "
             "plain ms | speculative ms |", "|---|---|---|---|---|---|---|---|"]
    for task, by_recipe in tasks.items():
        for recipe, r in by_recipe.items():
            lines.append(f"| {task} | {recipe} | {r['identical_answers']}/{r['examples']} | {r['acceptance']} | "
                         f"{r['tokens_per_fp32_call']} | {r['mean_tokens']} | {r['plain_ms']} | {r['speculative_ms']} |")
    write_atomic(args.report.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"report": str(args.report)}))


if __name__ == "__main__":
    main()
