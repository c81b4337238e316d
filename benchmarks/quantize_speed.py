"""Per-graph latency and size of every quantization recipe against FP32, same feeds, same run.

    python benchmarks/quantize_speed.py --artifacts artifacts/nano --report benchmarks/results/quantize_nano_cpu.json
    python benchmarks/quantize_speed.py --preset small --report benchmarks/results/quantize_small_cpu.json

Feeds are the calibration feeds the FP32 runtime records on calib_data (prefill and decode steps
with the preallocated cache, as the device runs them). Decode step = median over every recorded
one-token step, prefill = median over the prompts, encoder = median over the samples; each after a
warm-up, ``--repeats`` times. Accuracy is not measured here (``eov-export quantize`` gates it); with
``--preset`` the weights are random, so only speed and size mean something.
QDQ graphs (trt-int8, trt-fp8, w4a16) are for TensorRT; ONNX Runtime on CPU emulates them, so their
CPU latency is reported for completeness, not as their speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def median_ms(session, feeds, repeats: int) -> float:
    session.run(None, feeds[0])
    times = []
    for _ in range(repeats):
        for feed in feeds:
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=None, help="FP32 artifacts (eov-export onnx)")
    parser.add_argument("--preset", default=None, help="export this preset with random weights instead")
    parser.add_argument("--recipes", default="ort-cpu-int8,ort-cpu-int4,trt-int8,trt-fp8,w4a16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()

    import onnxruntime as ort

    from eov_edge.core import manifest as mf
    from eov_edge.core.paths import write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.quantize.build import write_ungated
    from eov_edge.quantize.calibration import calibration_set

    work = Path(tempfile.mkdtemp(prefix="eov-qbench-"))
    artifacts = args.artifacts
    if artifacts is None:
        from eov_edge.export.onnx_export import export_onnx

        artifacts = work / "fp32"
        export_onnx(artifacts, preset=args.preset or "small", validate=False)
    manifest = mf.load_manifest(artifacts)
    calibration = calibration_set(artifacts)
    decoder_feeds = calibration.feeds[mf.DECODER]
    feeds = {
        "encoder": calibration.feeds[mf.ENCODER],
        "prefill": [f for f in decoder_feeds if f[mf.INPUTS_EMBEDS].shape[1] > 1],
        "decode_step": [f for f in decoder_feeds if f[mf.INPUTS_EMBEDS].shape[1] == 1][:40],
    }
    graph_of = {"encoder": mf.ENCODER, "prefill": mf.DECODER, "decode_step": mf.DECODER}

    def options():
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        return o

    def measure(paths: dict[str, Path]) -> dict:
        out = {}
        for what, graph in graph_of.items():
            session = ort.InferenceSession(str(paths[graph]), options(), providers=["CPUExecutionProvider"])
            out[what + "_ms"] = round(median_ms(session, feeds[what], args.repeats), 3)
        out["size_mb"] = {g: round(p.stat().st_size / 2**20, 2) for g, p in paths.items()}
        return out

    fp32_paths = {g: artifacts / mf.GRAPH_FILES[g] for g in (mf.ENCODER, mf.PROJECTOR, mf.DECODER)}
    measure(fp32_paths)  # discarded: the first sessions of a process pay one-time costs (page cache, allocator)
    rows = {"fp32": measure(fp32_paths)}
    print("fp32", json.dumps(rows["fp32"]), flush=True)
    for name in args.recipes.split(","):
        quantized = write_ungated(artifacts, name, work / name, calibration)
        paths = {g: quantized / mf.GRAPH_FILES[g] for g in fp32_paths}
        row = measure(paths)
        for key in ("encoder_ms", "prefill_ms", "decode_step_ms"):
            row[key.replace("_ms", "_speedup")] = round(rows["fp32"][key] / row[key], 3)
        row["graphs_size_ratio"] = round(sum(rows["fp32"]["size_mb"].values()) / sum(row["size_mb"].values()), 3)
        rows[name] = row
        print(name, json.dumps(row), flush=True)

    report = {
        "what": "per-graph CPU latency (ONNX Runtime) and graph size of each recipe vs FP32, same feeds",
        "artifacts": str(args.artifacts) if args.artifacts else f"preset {args.preset or 'small'}, random weights",
        "model_config_preset": manifest.model_config.get("preset"),
        "machine": {"threads": args.threads, "platform": platform.platform(), "onnxruntime": ort.__version__},
        "feeds": {k: len(v) for k, v in feeds.items()}, "git_commit": git_commit(), "recipes": rows,
    }
    write_json_atomic(args.report, report)


if __name__ == "__main__":
    main()
