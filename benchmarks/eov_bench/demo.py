"""`make demo`: the whole chain on the shipped nano checkpoint, on real samples, in one command.

    python -m eov_edge.bench.demo --out demo_out            # about 5 minutes on 2 cores

1. export the checkpoint to ONNX (with the parity proof against PyTorch);
2. quantize it with ``ort-cpu-int8`` through the accuracy gate, on the held-out pack shipped in
   ``calib_data/heldout/`` (nothing outside the repository is needed);
3. verify the FP32 artifacts again (``eov-export verify``);
4. run the INT8 runtime on a real sample of every modality from calib_data (answers printed) and over a
   georeferenced Landsat scene, tiled, writing GeoJSON;
5. benchmark PyTorch eager against the FP32 and INT8 runtime;
then a short report: accuracy table, speed table, where the files are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


class Steps:
    def __init__(self, total: int) -> None:
        self.total, self.index, self.started = total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.index += 1
        print(f"\n=== [{self.index}/{self.total}] {title}  (t = {time.perf_counter() - self.started:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--per-task", type=int, default=32, help="held-out examples per task for the gate")
    parser.add_argument("--repeats", type=int, default=3, help="benchmark repeats")
    parser.add_argument("--rounds", type=int, default=3, help="benchmark rounds (eov-bench --rounds)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per benchmark answer")
    parser.add_argument("--quick", action="store_true", help="tiny settings (the test of this chain)")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_task, args.repeats, args.max_new_tokens, args.rounds = 4, 1, 8, 2

    from eov_edge.bench.cli import run_bench
    from eov_edge.core.calib import load_calib_samples
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.core.tasks import HEADLINE_METRICS, TASKS
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.export.validate import verify
    from eov_edge.quantize.build import quantize_artifacts
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.geo import write_json_atomic
    from eov_edge.runtime.pipeline import Pipeline
    from eov_edge.runtime.scene import run_scene

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / "artifacts" / "nano", out / "artifacts" / "nano-int8"
    step = Steps(5)

    step("export the shipped nano checkpoint to ONNX, with parity against PyTorch")
    manifest = export_onnx(fp32, checkpoint=NANO_CHECKPOINT, overwrite=True)
    print(json.dumps(manifest.validation["summary"], indent=1))

    step(f"quantize with ort-cpu-int8 through the accuracy gate (up to {args.per_task} held-out examples per task "
         "of the shipped pack)")
    quant = quantize_artifacts(fp32, "ort-cpu-int8", int8, per_task=args.per_task, overwrite=True, max_drop=1.0,
                               progress=lambda m: print("  " + m, flush=True))
    print(f"  {quant['size']['fp32_bytes'] / 2**20:.1f} MiB -> {quant['size']['quantized_bytes'] / 2**20:.1f} MiB")

    step("verify the FP32 artifacts again (eov-export verify)")
    verified = verify(fp32, NANO_CHECKPOINT, fp32 / "verify_report.json")
    print(f"  ok: {verified['ok']}, tokens identical {verified['summary']['token_identical']}")

    step("run the INT8 runtime on every modality, and a georeferenced scene to GeoJSON")
    with Pipeline.from_artifacts(int8) as pipe:
        for calib in load_calib_samples():
            views = [pipe.read(list(files), band_set=calib.band_set) for files in calib.views]
            task = TASKS[calib.task or "caption"]
            # each task its answers' budget (a detection 96 tokens): no answer cut inside a shape
            generation = GenerationConfig(max_new_tokens=task.answer_tokens)
            [answer] = pipe.answer(views, task=task, generation=generation)
            print(f"  [{calib.modality}] {calib.id} ({task.name}): {answer.whole_text()!r}")
            if task.spatial:
                print(f"      {len(answer.detections)} shape(s) in source pixels, {len(answer.problems)} malformed"
                      + (", cut at the token budget" if answer.cut_at_budget else ""))
        landsat = next(c for c in load_calib_samples() if c.id == "landsat7_etm_olinda")
        scene = run_scene(pipe, [str(p) for p in landsat.views[0]], "detection", tile=256, overlap=32,
                          band_set=landsat.band_set,
                          generation=GenerationConfig(max_new_tokens=TASKS["detection"].answer_tokens))
        write_json_atomic(out / "scene.geojson", scene.geojson())
        print(f"  scene {landsat.views[0][0].name}: {scene.tiles} tiles, {len(scene.detections)} detection(s) "
              f"-> {out / 'scene.geojson'} (WGS 84, RFC 7946)")

    step("benchmark PyTorch eager vs the FP32 and INT8 runtime (same inputs, same run)")
    bench = run_bench("nano", 1, out / "bench", repeats=args.repeats, max_new=args.max_new_tokens,
                      recipes=("ort-cpu-int8",), progress=lambda m: print("  " + m, flush=True),
                      artifacts=fp32, recipe_artifacts={"ort-cpu-int8": int8},
                      rounds=args.rounds)

    print("\n=== report")
    print("\naccuracy, ort-cpu-int8 against FP32 on held-out data (points):")
    print("| task | metric | FP32 | INT8 |\n|---|---|---|---|")
    for row in quant["gate"]["rows"]:
        if HEADLINE_METRICS.get(row["task"]) == row["metric"]:
            print(f"| {row['task']} | {row['metric']} | {row['fp32']:.1f} | {row['quantized']:.1f} |")
    print("\nspeed, nano, batch 1:")
    print("| backend | end to end ms | x PyTorch | peak RSS MiB | size MiB |\n|---|---|---|---|---|")
    for name, row in bench["rows"].items():
        print(f"| {name} | {row['e2e_ms']['median']:.1f} | {row['speedup_e2e']:.2f} | {row['peak_rss_mb']} | "
              f"{row['size_mb']} |")
    print(f"\nfiles: {fp32} (FP32 ONNX), {int8} (INT8 + quant_report.json), {out / 'scene.geojson'}, "
          f"{out / 'bench'} (bench.json, bench.md, bench.png)")
    print(f"total {time.perf_counter() - step.started:.0f} s")
    return {"quantization": quant, "bench": bench, "scene": scene.summary()}


if __name__ == "__main__":
    main()
