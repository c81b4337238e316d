"""Export a large preset (default eov-2b) with random weights and measure it: time, peak memory,
graph and external-data sizes, and one ONNX Runtime prefill + decode step against PyTorch.

    python benchmarks/export_large.py --preset eov-2b --out /tmp/eov-2b --report benchmarks/results/export_eov-2b.json

Random weights make whole-answer parity meaningless (and PyTorch generate() of a 2B model on a CPU
takes minutes), so the check here is per graph: ORT vs PyTorch on one prefill and one decode step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
from pathlib import Path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


SESSION_GROWTH = """
import sys
from pathlib import Path

import eov_edge.runtime.ort_runner as ort_runner
from eov_edge.core.manifest import GraphEntry

if sys.argv[2] == "glibc":
    ort_runner._set_mmap_threshold = lambda size: False

def status(key):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(key)) / 2**20  # GiB

start = status("VmRSS:")
path = Path(sys.argv[1])
runner = ort_runner.OrtRunner("decoder", path, GraphEntry(path.name, "", [], []), threads=1).activate()  # kept: alive
print(status("VmRSS:") - start, status("VmHWM:") - start)
"""


def runtime_session_gib(graph: Path, mode: str) -> dict:
    """Resident growth (GiB) of a fresh process that opens ``graph`` as the runtime does, and its peak."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SESSION_GROWTH, str(graph), mode], capture_output=True, text=True,
                         env=env, check=True)
    grown, peak = map(float, out.stdout.split()[-2:])
    return {"resident": round(grown, 2), "peak": round(peak, 2)}


def fused_decoder_feed(feed: dict, manifest, out: Path) -> dict:
    """The portable decoder's ``feed`` (one row: prompt or step on a past) as the fused CPU decoder
    takes it: the past in a buffer of the model's context, logits at the last fed position."""
    import numpy as np

    from eov_edge.core import manifest as mf
    from eov_edge.export.ort_decoder import empty_cache, prompt_feed

    cache = empty_cache(manifest, manifest.max_context)
    cached = feed[next(iter(cache))].shape[2]
    for name, buffer in cache.items():  # (1, KV, P, hd) into (1, KV, C, hd)
        buffer[:, :, :cached] = feed[name]
    return prompt_feed(out, manifest, feed[mf.INPUTS_EMBEDS], cached, np.array([-1], np.int64), cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="eov-2b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--decoder", choices=["portable", "ort-cpu"], default="portable",
                        help="ort-cpu: the fused CPU decoder (eov-export onnx --decoder ort-cpu), checked on the same steps")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from eov_edge.core import manifest as mf
    from eov_edge.core.provenance import git_commit
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.export.specs import GRAPH_SPECS, Shapes
    from eov_edge.model.processor import load_model
    from eov_edge.runtime.ort_runner import freed_weights_leave_the_process

    torch.set_num_threads(os.cpu_count() or 2)
    started = time.time()
    model, processor = load_model(None, args.preset, seed=0)
    built_s = time.time() - started
    parameters = sum(p.numel() for p in model.parameters())
    started = time.time()
    manifest = export_onnx(args.out, model_and_processor=(model, processor), preset=args.preset, overwrite=True,
                           validate=False, decoder=args.decoder)
    export_s = time.time() - started
    export_peak = peak_rss_gib()

    sizes = {f.name: f.stat().st_size for f in args.out.iterdir()}
    # PyTorch's outputs first, then the model goes: the ONNX Runtime session holds its own copy of the
    # decoder's weights (6 GB for eov-2b), and the model beside it would not fit a 24 GB machine.
    spec = GRAPH_SPECS[mf.DECODER]
    module = spec.module(model).eval()
    cases = {}
    for label, shapes in (("prefill", Shapes(batch=1, seq=16, past=0)), ("decode", Shapes(batch=1, seq=1, past=16))):
        inputs = spec.inputs(model, shapes, torch.Generator().manual_seed(7))
        feed = {n: t.numpy().copy() for n, t in zip(spec.input_names(model), [*inputs[:3], *inputs[3]])}
        with torch.no_grad():
            expected = module(*inputs)[0].numpy().copy()
        cases[label] = (feed, expected)
    del module, model, inputs
    gc.collect()
    options = ort.SessionOptions()
    started = time.time()
    with freed_weights_leave_the_process():  # as the runtime loads it: prepacked weights' originals unmapped
        session = ort.InferenceSession(str(args.out / spec.file), options, providers=["CPUExecutionProvider"])
    load_s = time.time() - started
    steps = {}
    past_len = 0
    for label, (feed, expected) in cases.items():
        if args.decoder == "ort-cpu":
            feed = fused_decoder_feed(feed, manifest, args.out)
        started = time.time()
        got = session.run(None, feed)
        ort_ms = (time.time() - started) * 1e3
        # the fused decoder's present is the whole capacity buffer: its filled length is the feed's
        present_len = int(feed[mf.TOTAL_SEQUENCE_LENGTH]) if args.decoder == "ort-cpu" else int(got[1].shape[2])
        steps[label] = {"ort_ms": round(ort_ms, 1), "max_abs_logits": float(np.abs(got[0] - expected).max()),
                        "present_len": present_len}
        past_len = present_len
    del session
    gc.collect()
    runtime_session = {mode: runtime_session_gib(args.out / spec.file, mode) for mode in ("held", "glibc")}
    report = {
        "preset": args.preset, "parameters": parameters, "build_s": round(built_s, 1),
        "export_s": round(export_s, 1), "peak_rss_gib_during_export": round(export_peak, 2),
        "peak_rss_gib_total": round(peak_rss_gib(), 2), "ort_session_load_s": round(load_s, 1),
        "files_bytes": sizes,
        "external_data": {name: g.external_data for name, g in manifest.graphs.items()},
        "steps": steps, "final_past_len": past_len,
        # the runtime's decoder session (OrtRunner), each in a fresh process: resident growth when
        # the mmap threshold is held while it loads (the runtime's way) and with glibc's own
        "runtime_decoder_session_gib": {
            "weights": round(sizes.get(f"{spec.file}.data", sizes[spec.file]) / 2**30, 2), **runtime_session},
        "machine": f"{os.cpu_count()} CPU cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "git_commit": git_commit(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "decoder": args.decoder,
        "command": f"python benchmarks/export_large.py --preset {args.preset} --out {args.out} --report {args.report}"
                   + (f" --decoder {args.decoder}" if args.decoder != "portable" else ""),
        "note": "single timed ONNX Runtime call per step, no warm-up: a latency indication, not a benchmark",
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
