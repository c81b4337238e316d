"""The accuracy gate on the shipped checkpoint, on the shipped held-out pack and on the full data, side by side.

    python benchmarks/gate_sets.py --recipe ort-cpu-int8 --report benchmarks/results/gate_sets_nano_ort-cpu-int8.json

Exports the shipped nano checkpoint, then runs ``eov-export quantize``'s gate (the same function) twice
with one recipe: on the pack in ``calib_data/heldout/`` (what a fresh clone gates on) and on the val
split of the shared data folder (``--per-task`` per task, the larger gate; skipped with a note where
the folder is absent). Reports each task's headline metric in points, FP32 and quantized, the drop and
the examples behind it, and the whole gate reports beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ort-cpu-int8")
    parser.add_argument("--per-task", type=int, default=256, help="examples per task of the full data's val split")
    parser.add_argument("--decoder", default="portable", choices=["portable", "ort-cpu"])
    parser.add_argument("--activations", choices=["fp16", "fp32"], default=None,
                        help="trt-int8 / trt-fp8: what the Q/DQ graphs carry between their pairs [default: the recipe's]")
    parser.add_argument("--sets", choices=["both", "pack"], default="both",
                        help="pack: the shipped pack only (the full data's gate takes long for emulated Q/DQ recipes)")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()

    from eov_edge.core import manifest as mf
    from eov_edge.core.paths import NANO_CHECKPOINT, data_dir, heldout_pack, write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.core.tasks import HEADLINE_METRICS
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.quantize.build import QuantizeError, quantize_artifacts
    from eov_edge.training.evaluate import data_folder_set

    sets = {"shipped pack": heldout_pack()}
    root = data_dir()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "nano"
        export_onnx(fp32, checkpoint=NANO_CHECKPOINT, decoder=args.decoder, validate=False)
        manifest = mf.load_manifest(fp32)
        if args.sets == "both" and (root / "README.md").is_file():
            patch = int(manifest.model_config["vision_config"]["patch_size"])
            sets[f"full data, val split ({args.per_task} per task)"] = data_folder_set(
                root, manifest.image_size, patch, args.per_task, seed=2000, baseline_factor=1)
        results = {}
        for name, gate_data in sets.items():
            started = time.time()
            try:
                report = quantize_artifacts(fp32, args.recipe, Path(tmp) / f"q{len(results)}", gate_data=gate_data,
                                            progress=lambda m: print("  " + m, flush=True),
                                            activations=args.activations)
            except QuantizeError as refused:  # a refusal is a result too: its rows and rounds
                rejected = json.loads(next(Path(tmp).glob(f"q{len(results)}.rejected.json")).read_text())
                results[name] = {"accepted": False, "refusal": str(refused).splitlines()[0],
                                 "rounds": len(rejected["rounds"]), "rows": rejected["rows"],
                                 "worst_drop": max(r["drop"] for r in rejected["rows"]),
                                 "examples": None, "seconds": round(time.time() - started, 1)}
                print(f"{name}: refused", flush=True)
                continue
            gate = report["gate"]
            results[name] = {"examples": gate["examples"], "per_task_counts": gate["per_task_counts"],
                             "accepted": gate["accepted"], "worst_drop": max(r["drop"] for r in gate["rows"]),
                             "fallback_nodes": [f["node"] for f in gate["fallback"]], "rows": gate["rows"],
                             "seconds": round(time.time() - started, 1)}
            print(f"{name}: {gate['examples']} examples, worst drop {results[name]['worst_drop']:+.2f}", flush=True)
    names = list(results)
    lines = ["| task | metric | " + " | ".join(f"{n}: FP32 | quantized | drop" for n in names) + " |",
             "|---|---|" + "---|---|---|" * len(names)]
    for task, metric in HEADLINE_METRICS.items():
        cells = []
        for name in names:
            row = next((r for r in results[name]["rows"] if r["task"] == task and r["metric"] == metric), None)
            cells.append("- | - | -" if row is None else f"{row['fp32']:.1f} | {row['quantized']:.1f} | {row['drop']:+.2f}")
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines.append("| every metric | worst drop | " + " | ".join(
        (f"{results[n]['examples']} examples | | {results[n]['worst_drop']:+.2f}" if results[n]["accepted"] else
         f"refused after {results[n]['rounds']} rounds | | {results[n]['worst_drop']:+.2f}") for n in names) + " |")
    out = {"what": f"the {args.recipe} gate on the shipped nano, per held-out set (points)", "recipe": args.recipe,
           "activations": args.activations or "the recipe's",
           "decoder": args.decoder, "git_commit": git_commit(), "sets": results, "markdown": "\n".join(lines)}
    write_json_atomic(args.report, out)
    args.report.with_suffix(".md").write_text(f"# {out['what']}\n\n`python benchmarks/gate_sets.py --recipe "
                                              f"{args.recipe} --sets {args.sets}" + (f" --activations {args.activations}" if args.activations else "")
                                              + f"` at `{out['git_commit']}`\n\n"
                                              + out["markdown"] + "\n")
    print(out["markdown"])
    print(json.dumps({n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
