"""Scenes per minute on one process against Ray with 1 and 2 workers, same scenes, same run.

    python benchmarks/scale_out.py --artifacts artifacts/small --report benchmarks/results/scale_out_small.json

The scene list defaults to real rasters of the shared data that read without options (Landsat,
GOES, Landsat 7 ETM+, HRSID SAR chips), tiled 256 px with 32 px overlap, detection, greedy.
Each round runs every row into a fresh output folder, in an order that alternates between rounds
(the machine's speed drifts); rows: in one process with 1 and with 2 ONNX Runtime threads, Ray with
1 worker (1 thread) and with 2 workers (1 thread each). Ray itself is started once, before the
rounds, and its start-up is reported apart, as is each row's start-up (loading the Pipeline, or
starting the actors and loading theirs). The per-tile overhead of Ray is the paired difference of
the 1-worker Ray row and the 1-thread in-process row, over the tiles. Every row's GeoJSON must be
byte-identical to the 1-thread in-process row's.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROWS = ("process-1-thread", "process-2-threads", "ray-1-worker", "ray-2-workers")


def default_scenes() -> list[str]:
    from eov_edge.core.paths import data_dir

    root = data_dir()
    samples = [root / "geotiff_samples" / name for name in ("RGB.byte.tif", "goes.tif", "L7_ETMs.tif")]
    return [str(p) for p in samples + sorted((root / "hrsid_mini" / "images").glob("*.jpg"))[:9]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("scenes", nargs="*", help="default: 12 real rasters of the shared data")
    parser.add_argument("--task", default="detection")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report", type=Path, help="write the figures here as JSON (and a .md beside it)")
    args = parser.parse_args(argv)

    import onnxruntime
    import ray

    from eov_edge.core.manifest import sha256_file
    from eov_edge.core.provenance import cpu_model, git_commit
    from eov_edge.runtime.cluster import RayTiles
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline
    from eov_edge.runtime.scene_list import expand_scenes
    from eov_edge.runtime.scene_runs import InProcessTiles, SceneRunConfig, run_scenes

    scenes = expand_scenes(args.scenes or default_scenes())
    config = SceneRunConfig(args.task, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                            generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    artifacts_sha = sha256_file(args.artifacts / "manifest.json")
    work = Path(tempfile.mkdtemp(prefix="scale_out."))

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, logging_level="WARNING")
    ray_start_s = time.perf_counter() - started

    def executor(row: str):
        if row.startswith("process"):
            threads = 1 if row == "process-1-thread" else 2
            return InProcessTiles(Pipeline.from_artifacts(args.artifacts, threads=threads, thread_pool="session",
                                                          verify_hashes=False), config)
        workers = 1 if row == "ray-1-worker" else 2
        return RayTiles(args.artifacts, {"threads": 1, "verify_hashes": False}, config, workers=workers)

    runs: dict[str, list[dict]] = {row: [] for row in ROWS}
    identical = True
    for round_index in range(args.rounds):
        order = ROWS if round_index % 2 == 0 else tuple(reversed(ROWS))
        for row in order:
            out = work / f"{row}-{round_index}"
            begun = time.perf_counter()
            tiles = executor(row)
            startup = time.perf_counter() - begun
            try:
                summary = run_scenes(scenes, out, config, tiles, artifacts_sha)
            finally:
                tiles.close()
            runs[row].append({"startup_s": startup, "run_s": summary.seconds, "tiles": summary.tiles,
                              "done": summary.done, "failed": summary.failed,
                              "scenes_per_min": summary.scenes_per_minute})
            print(f"round {round_index} {row}: start-up {startup:.1f} s, {summary.line()}", flush=True)
        reference = work / f"process-1-thread-{round_index}"
        for row in ROWS[1:]:
            for produced in sorted(reference.glob("*.geojson")):
                other = work / f"{row}-{round_index}" / produced.name
                identical = identical and other.is_file() and other.read_bytes() == produced.read_bytes()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    def median(row: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[row])

    tiles = runs["process-1-thread"][0]["tiles"]
    overheads = [(ray_run["run_s"] - local["run_s"]) / tiles * 1000
                 for ray_run, local in zip(runs["ray-1-worker"], runs["process-1-thread"])]
    speedups = [two["run_s"] and one["run_s"] / two["run_s"]
                for two, one in zip(runs["ray-2-workers"], runs["ray-1-worker"])]
    report = {
        "what": "scenes/min over one scene list: in one process against Ray workers (benchmarks/scale_out.py)",
        "date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "cpu": cpu_model(),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "ray": ray.__version__,
        "artifacts": str(args.artifacts), "artifacts_sha256": artifacts_sha,
        "settings": {**config.answer_settings(), "batch_size": config.batch_size},
        "scenes": len(scenes), "tiles": tiles, "rounds": args.rounds, "ray_start_s": round(ray_start_s, 2),
        "rows": {row: {"scenes_per_min": round(median(row, "scenes_per_min"), 2),
                       "run_s": round(median(row, "run_s"), 2), "startup_s": round(median(row, "startup_s"), 2),
                       "ms_per_tile": round(1000 * median(row, "run_s") / tiles, 1), "runs": runs[row]}
                 for row in ROWS},
        "ray_overhead_ms_per_tile": [round(v, 1) for v in overheads],
        "ray_2_over_1_worker": [round(v, 3) for v in speedups],
        "outputs_identical": identical,
    }
    print(markdown(report))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
        args.report.with_suffix(".md").write_text(markdown(report))
    return report


def _short(commit: str) -> str:
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def markdown(report: dict) -> str:
    lines = [f"Scale-out, {report['scenes']} scenes / {report['tiles']} tiles ({report['settings']['task']}, tile "
             f"{report['settings']['tile']}), {report['date']}, {report['cpu']}, commit {_short(report['commit'])}, "
             f"median of {report['rounds']} rounds", "",
             "| runner | scenes/min | ms per tile | start-up s |", "|---|---:|---:|---:|"]
    for row, r in report["rows"].items():
        lines.append(f"| {row} | {r['scenes_per_min']:.1f} | {r['ms_per_tile']:.1f} | {r['startup_s']:.1f} |")
    lines += ["", f"Ray start-up {report['ray_start_s']:.1f} s (once). Ray's overhead per tile against one process "
              f"(1 thread each): {report['ray_overhead_ms_per_tile']} ms. 2 workers over 1: "
              f"{report['ray_2_over_1_worker']}x. Outputs identical to one process: {report['outputs_identical']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
