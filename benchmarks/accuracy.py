"""Task-metric table for every backend and recipe against FP32 PyTorch, on the same held-out examples.

    python benchmarks/accuracy.py --artifacts artifacts/nano \
        --quantized artifacts/nano-int8 artifacts/nano-trt-int8 artifacts/nano-w4a16 \
        --report benchmarks/results/accuracy_nano.json

Columns: PyTorch FP32 ``generate()`` on the checkpoint the artifacts were exported from (the
reference), the runtime on the FP32 artifacts, and the runtime on each quantized artifacts folder
(QDQ graphs for TensorRT run emulated by ONNX Runtime on CPU). Rows: every task metric, in points,
beside the image-blind baseline. Examples: the val split (the quantization gate's own seed),
without any example that shares a file with calib_data.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="FP32 artifacts (eov-export onnx)")
    parser.add_argument("--quantized", type=Path, nargs="*", default=[], help="quantized artifacts folders")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped nano checkpoint")
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from eov_edge.bench.held_out import benchmark_set
    from eov_edge.core import manifest as mf
    from eov_edge.core.calib import load_calib_samples
    from eov_edge.core.paths import NANO_CHECKPOINT, write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.evaluation.scoring import score_predictions
    from eov_edge.model.processor import load_checkpoint
    from eov_edge.quantize.calibration import CalibrationSet
    from eov_edge.quantize.gate import answer_examples, task_points
    from eov_edge.training.evaluate import evaluate

    torch.set_num_threads(os.cpu_count() or 2)
    manifest = mf.load_manifest(args.artifacts)
    calib_files = CalibrationSet(sources=[str(p) for c in load_calib_samples() for files in c.views for p in files])
    patch = int(manifest.model_config.get("vision_config", {}).get("patch_size", 16))
    held_out, dropped = benchmark_set(manifest.image_size, patch, args.per_task, calib_files.sources)
    examples, train = held_out.examples, held_out.baseline_examples

    model, processor = load_checkpoint(args.checkpoint or NANO_CHECKPOINT)
    reports = {"pytorch fp32": evaluate(model, processor, examples, train, progress=False)}
    reports["runtime fp32"] = score_predictions(answer_examples(args.artifacts, examples), examples, train,
                                                manifest.image_size)
    for folder in args.quantized:
        recipe = mf.load_manifest(folder).quantization.get("recipe", folder.name)
        reports[f"runtime {recipe}"] = score_predictions(answer_examples(folder, examples), examples, train,
                                                         manifest.image_size)
        print(f"scored {recipe}", flush=True)

    points = {name: task_points(report) for name, report in reports.items()}
    reference = points["pytorch fp32"]
    rows = []
    for (task, metric), value in reference.items():
        baseline = reports["pytorch fp32"]["tasks"][task].get(f"baseline_{metric}")
        row = {"task": task, "metric": metric, "baseline": None if baseline is None else round(100 * baseline, 2)}
        row.update({name: round(p.get((task, metric), float("nan")), 2) for name, p in points.items()})
        rows.append(row)
    names = list(points)
    worst = {name: round(max(reference[k] - points[name].get(k, float("nan")) for k in reference), 2)
             for name in names[1:]}
    lines = ["| task | metric | baseline | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for row in rows:
        base = "-" if row["baseline"] is None else f"{row['baseline']:.1f}"
        lines.append(f"| {row['task']} | {row['metric']} | {base} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    lines.append("| worst drop vs PyTorch | | | - | " + " | ".join(f"{worst[n]:+.2f}" for n in names[1:]) + " |")
    report = {"what": "task metrics in points, every backend against FP32 PyTorch on the same held-out examples",
              "examples": len(examples), "dropped_for_calibration_overlap": dropped, "per_task": args.per_task,
              "git_commit": git_commit(), "rows": rows, "worst_drop_vs_pytorch": worst, "markdown": "\n".join(lines)}
    write_json_atomic(args.report, report)
    args.report.with_suffix(".md").write_text(report["markdown"] + "\n")
    print(report["markdown"])


if __name__ == "__main__":
    main()
