"""``eov-bench``: every backend against PyTorch eager ``generate()``, same model, same inputs, one run.

    eov-bench --preset nano --batch 1 --out bench/nano-b1

Rows: PyTorch eager (the baseline), the runtime on FP32 ONNX Runtime (its fused CPU decoder, and the
portable decoder that TensorRT engines are built from), and the runtime on each CPU quantization
recipe (``ort-cpu-int8``, ``ort-cpu-int4``; made here without the accuracy gate, for speed only:
accuracy comes from ``eov-export quantize``'s report). For each: encoder and projector ms, time to
first token, decode ms/token and tokens/s, end-to-end ms (median, min, max of ``--repeats`` runs
after a warm-up), peak RSS (measured in a separate process per row), size on disk, the ratio to the
baseline, decode time against the memory-bandwidth floor (decoder weight bytes read per token /
weight-streaming bandwidth of ONNX Runtime's MatMul measured in this run), and for the FP32 rows the
first token against its compute floor (its FLOPs / ONNX Runtime's FP32 GEMM rate measured in this
run); with both floors, the most any FP32 runtime could gain over this run's PyTorch. Every row is timed in its
own process, one after the other: the runtime without PyTorch loaded (as it runs on a device), the
baseline without ONNX Runtime sessions beside it. Writes ``bench.json``,
``bench.md`` and ``bench.png`` into OUT. ``nano`` uses the shipped checkpoint, ``small`` random
weights (seed 0).

With ``onnxruntime-genai`` installed (``--peer``, the default then), a second table puts our decode
loop beside ONNX Runtime GenAI's on the same decoder weights (:mod:`eov_edge.bench_peer`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

from eov_edge.bench_peer import PEER_MIN_ROUNDS, int4_folder
from eov_edge.errors import EOVError
from eov_edge.paths import write_atomic, write_json_atomic
from eov_edge.quantize.recipes import DEFAULT_INT4_BLOCK_SIZE, INT4_BLOCK_SIZES

RECIPES = ("ort-cpu-int8", "ort-cpu-int4")
DEFAULT_DRAFT = "ort-cpu-int8"  # the speculative row's draft (batch 1)


def speculative_row(recipe: str) -> str:
    return f"runtime fp32 + {recipe.removeprefix('ort-cpu-')} draft"

PEAK_SCRIPT = """
import json, sys
from eov_edge.bench import _samples, _pytorch_model
from eov_edge.runtime.pipeline import peak_rss_mb
kind, where, batch, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if kind == "pytorch":
    import torch
    model, processor = _pytorch_model(where)
    samples = _samples(model.config.image_size, batch)
    with torch.no_grad():
        model.generate(**processor(samples, max_new_tokens=max_new), max_new_tokens=max_new)
else:
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.from_artifacts(where, thread_pool="shared", draft=sys.argv[5] if len(sys.argv) > 5 else None)
    samples = _samples(pipe.spec.image_size, batch)
    pipe.generate_ids(pipe.batch(samples, max_new), GenerationConfig(max_new_tokens=max_new))
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
"""


TIMING_SCRIPT = """
import json, os, sys
from pathlib import Path
from eov_edge.bench import _pytorch_model, _samples, bench_pytorch, bench_runtime
kind, where, batch, max_new, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if kind == "pytorch":
    import torch
    torch.set_num_threads(os.cpu_count() or 2)
    model, processor = _pytorch_model(where)
    row = bench_pytorch(model, processor, _samples(model.config.image_size, batch), max_new, repeats)
else:
    row = bench_runtime(Path(where), batch, max_new, repeats, draft=Path(sys.argv[6]) if len(sys.argv) > 6 else None)
print(json.dumps(row))
"""


def _samples(image_size: int, batch: int):
    """``batch`` single-view calib_data samples with their task's question (cycled if fewer)."""
    from eov_edge.calib import load_calib_samples
    from eov_edge.inputs import Sample
    from eov_edge.tasks import DEFAULT_QUESTIONS

    singles = [c for c in load_calib_samples() if len(c.views) == 1]
    chosen = [singles[i % len(singles)] for i in range(batch)]
    return [Sample(views=c.read(size=image_size), instruction=DEFAULT_QUESTIONS[c.task or "caption"]) for c in chosen]


def _pytorch_model(where: str):
    """``where``: a checkpoint folder, or ``preset:NAME`` for random weights with seed 0."""
    import torch

    from eov_edge.export.onnx_export import load_model
    from eov_edge.processor import load_checkpoint

    if where.startswith("preset:"):
        torch.manual_seed(0)
        model, processor = load_model(None, where.split(":", 1)[1], seed=0)
        return model.eval(), processor
    return load_checkpoint(where)


def read_bandwidth_gbs(size_mb: int = 256, repeats: int = 20) -> float:
    """Weight-streaming bandwidth, GB/s: ONNX Runtime's own MatMul of one row against a ``size_mb``
    float32 weight (the decode step's kernel, on every core), median of ``repeats`` (the best is an
    outlier on this VM: 30-52 GB/s between runs). numpy's sum or BLAS GEMV read slower here (25-33
    GB/s against ORT's ~40 GB/s on the same 2 cores), which would put decode steps below their
    "floor"."""
    import numpy as np

    rows = 4096
    weight = np.random.default_rng(0).standard_normal((rows, size_mb * (1 << 20) // 4 // rows), dtype=np.float32)
    return weight.nbytes / _ort_matmul_seconds(np.ones((1, rows), np.float32), weight, repeats) / 1e9


def compute_peak_gflops(size: int = 1024, repeats: int = 20) -> float:
    """FP32 GEMM throughput, GFLOP/s: ONNX Runtime's own MatMul of two ``size`` x ``size`` matrices
    on every core, median of ``repeats``. The first token (encoder, projector, prefill) is dense
    GEMM work, so this is its floor's rate, as :func:`read_bandwidth_gbs` is the decode step's."""
    import numpy as np

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((size, size), dtype=np.float32)
    x = rng.standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / _ort_matmul_seconds(x, weight, repeats) / 1e9


def _ort_matmul_seconds(x, weight, repeats: int) -> float:
    """Median seconds of ONNX Runtime's CPU MatMul ``x @ weight`` (the weight a constant, as in our
    graphs) on every core, after one warm-up run."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_token_gflop(model, processor, samples) -> float:
    """GFLOP of the work every backend must do before the first token: the encoder and projector on
    the views, the prompt through the decoder, logits at the last position only (what the runtime's
    decoder computes). Counted by ``torch.utils.flop_counter`` on the PyTorch model (matrix products
    and convolutions, the attention products included; elementwise ops are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = processor(samples, max_new_tokens=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], modality_ids=batch["modality_ids"],
              attention_mask=batch["attention_mask"], logits_to_keep=1)
    return counter.get_total_flops() / 1e9


class BenchError(EOVError, ValueError):
    """Artifacts given to the benchmark that do not belong to its model or recipe."""


def _manifest_of_weights(directory: Path, weights_hash: str):
    """(manifest, None) if ``directory``'s files match its manifest and it records these weights;
    else (manifest or None, why not): the check both supplied and cached artifacts pass."""
    from eov_edge import manifest as mf

    try:
        manifest = mf.load_manifest(directory)
    except mf.ManifestError as err:
        return None, str(err)
    recorded = manifest.produced_by.get("weights_sha256")
    if recorded != weights_hash:
        return manifest, "of other weights" if recorded else "without the weights' hash"
    return manifest, None


def check_supplied_artifacts(directory: Path, weights_hash: str, recipe: str | None,
                             int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> dict:
    """Artifacts passed in (``--artifacts``, ``--recipe-artifacts``) must hold the benchmarked model's
    weights (the manifest's ``weights_sha256``) and, for a recipe row, that recipe's graphs (INT4: in
    the benchmark's block size, which ORT GenAI's int4 row matches); returns the manifest's gate
    summary (empty for FP32 artifacts)."""
    manifest, why = _manifest_of_weights(directory, weights_hash)
    if manifest is None:
        raise BenchError(why)
    if why and manifest.produced_by.get("weights_sha256") is None:
        raise BenchError(f"{directory}: its manifest does not record the weights' hash (exported before "
                         "eov-edge recorded it); re-export with eov-export onnx (and re-quantize) to time it")
    if why:
        raise BenchError(f"{directory}: exported from other weights ({manifest.produced_by.get('source')}) than "
                         "the benchmarked model; pass artifacts of this preset or checkpoint")
    made_with = (manifest.quantization or {}).get("recipe")
    if made_with != recipe:
        want = f"the {recipe} recipe's artifacts" if recipe else "FP32 artifacts (eov-export onnx)"
        raise BenchError(f"{directory}: made with {made_with or 'no recipe (FP32)'}, this row takes {want}")
    blocks = manifest.quantization.get("graphs", {}).get("decoder", {}).get("block_size") if recipe else None
    if blocks is not None and blocks != int4_block_size:
        raise BenchError(f"{directory}: INT4 in blocks of {blocks} weights, the benchmark's are {int4_block_size}; "
                         f"pass --int4-block-size {blocks}")
    return (manifest.quantization or {}).get("gate") or {}


def stale_cache(folder: Path, weights_hash: str) -> str | None:
    """Why an artifacts folder that an earlier run left in OUT/artifacts cannot be timed again (None:
    it can): missing or changed files, other weights, or another eov-edge version or git commit (an
    export made by older code would time that code: e.g. an encoder from before the fused CPU graphs).
    A tree with uncommitted changes counts as its commit plus "-dirty", whatever the changes."""
    from eov_edge import __version__
    from eov_edge import manifest as mf
    from eov_edge.provenance import git_commit

    if not (folder / mf.MANIFEST_FILE).is_file():
        return "not there"
    manifest, why = _manifest_of_weights(folder, weights_hash)
    if why:
        return why
    made = manifest.produced_by
    now = (__version__, git_commit())
    if (made.get("eov_edge"), made.get("git_commit")) != now:
        return f"made by eov-edge {made.get('eov_edge')} at {made.get('git_commit')}, this is {now[0]} at {now[1]}"
    return None


def gate_status(gate: dict) -> str:
    """One line on a quantized row's accuracy: what its manifest's gate summary says."""
    if not gate or not gate.get("accepted"):
        return "not gated (speed and size only)"
    floats = len(gate.get("fallback") or [])
    worst = max((r.get("drop", 0.0) for r in gate.get("rows", [])), default=0.0)
    return (f"gate accepted: worst drop {worst:.2f} points (budget {gate.get('budget_points')}) on "
            f"{gate.get('examples')} held-out examples, {floats} node(s) back in float")


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def _dir_size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and not p.name.endswith(".json")) / 2**20


def _weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def bench_pytorch(model, processor, samples, max_new: int, repeats: int) -> dict:
    import torch

    batch = processor(samples, max_new_tokens=max_new)
    with torch.no_grad():
        e2e = _timed(lambda: model.generate(**batch, max_new_tokens=max_new), repeats)
        first_batch = processor(samples, max_new_tokens=1)  # built outside the timing, as for end to end
        ttft = _timed(lambda: model.generate(**first_batch, max_new_tokens=1), repeats)
        encoder = _timed(lambda: model.vision_encoder(batch["pixel_values"], batch["modality_ids"]), repeats)
        features = model.vision_encoder(batch["pixel_values"], batch["modality_ids"])
        projector = _timed(lambda: model.projector(features), repeats)
        out = model.generate(**batch, max_new_tokens=max_new)
    tokens = [processor.decode(row.tolist()).token_ids for row in out]
    new_tokens = max(len(t) + 1 for t in tokens)
    return {"encoder_ms": _stats(encoder), "projector_ms": _stats(projector), "ttft_ms": _stats(ttft),
            "e2e_ms": _stats(e2e), "new_tokens": new_tokens, "tokens": tokens}


def bench_runtime(artifacts: Path, batch_size: int, max_new: int, repeats: int, draft: Path | None = None) -> dict:
    """``draft``: quantized artifacts whose decoder drafts for the FP32 decoder (speculative decoding)."""
    from eov_edge import manifest as mf
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    pipe = Pipeline.from_artifacts(artifacts, thread_pool="shared", draft=draft)
    samples = _samples(pipe.spec.image_size, batch_size)
    batch = pipe.batch(samples, max_new)
    greedy = GenerationConfig(max_new_tokens=max_new)
    for runner in pipe.runners.values():
        runner.timings.clear()
    e2e = _timed(lambda: pipe.generate_ids(batch, greedy), repeats)
    # one encoder / projector call per run; the first was the warm-up
    encoder = [1000 * t for t in pipe.runners[mf.ENCODER].timings[1:]]
    projector = [1000 * t for t in pipe.runners[mf.PROJECTOR].timings[1:]]
    first_batch = pipe.batch(samples, 1)  # built outside the timing, as for end to end
    ttft = _timed(lambda: pipe.generate_ids(first_batch, GenerationConfig(max_new_tokens=1)), repeats)
    ids, _ = pipe.generate_ids(batch, greedy)
    eos, pad = pipe.manifest.special_tokens["eos"], pipe.manifest.special_tokens["pad"]
    tokens = []
    for row in ids.tolist():
        row = row[: row.index(eos)] if eos in row else row
        tokens.append([t for t in row if t != pad])
    decoder_mb = (artifacts / pipe.manifest.graphs[mf.DECODER].file).stat().st_size / 2**20
    row = {"encoder_ms": _stats(encoder), "projector_ms": _stats(projector), "ttft_ms": _stats(ttft),
           "e2e_ms": _stats(e2e), "new_tokens": ids.shape[1], "tokens": tokens, "decoder_mb": decoder_mb,
           "size_mb": round(_dir_size_mb(artifacts), 2)}
    if pipe.prompt_session is not None:  # which session the runtime measured faster for prompts
        row["prompt_session"] = pipe.prompt_session
    if draft is not None:  # the FP32 artifacts plus what the draft loads: its decoder and token table
        draft_manifest = mf.load_manifest(draft, verify_hashes=False)
        entry = draft_manifest.graphs[mf.DECODER]
        files = [entry.file, entry.external_data, draft_manifest.embedding["file"]]
        row["size_mb"] = round(row["size_mb"] + sum((draft / f).stat().st_size for f in files if f) / 2**20, 2)
        row["speculative"] = pipe.stats()["speculative"]  # of the last generation: the one whose tokens these are
    return row


def _timed_row(kind: str, where: str, batch: int, max_new: int, repeats: int, draft: Path | None = None) -> dict:
    """``bench_pytorch`` or ``bench_runtime`` in a fresh process (``TIMING_SCRIPT``)."""
    extra = [str(draft)] if draft is not None else []
    out = subprocess.run([sys.executable, "-c", TIMING_SCRIPT, kind, where, str(batch), str(max_new), str(repeats),
                          *extra], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"timing the {kind} row ({where}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak(kind: str, where: str, batch: int, max_new: int, draft: Path | None = None) -> float | None:
    extra = [str(draft)] if draft is not None else []
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, kind, where, str(batch), str(max_new), *extra],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return round(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"], 1)


def _merge_rounds(runs: list[dict]) -> dict:
    """One row from its rounds: each timing's median is the median of the rounds' medians, its min
    and max those of all runs; everything else (tokens, sizes) from the first round."""
    row = dict(runs[0])
    for key in ("encoder_ms", "projector_ms", "ttft_ms", "e2e_ms"):
        row[key] = {"median": round(statistics.median(r[key]["median"] for r in runs), 3),
                    "min": min(r[key]["min"] for r in runs), "max": max(r[key]["max"] for r in runs)}
    row["e2e_ms_rounds"] = [r["e2e_ms"]["median"] for r in runs]
    if chosen := prompt_sessions_chosen(runs):
        row["prompt_session_chosen"] = chosen
    return row


def prompt_sessions_chosen(runs: list[dict]) -> dict[str, int]:
    """How often each prompt session was chosen over a row's rounds (each round's process measured it
    afresh, ``Pipeline.choose_prompt_session``); empty where the runtime measured nothing."""
    sessions = [r["prompt_session"]["chosen"] for r in runs if r.get("prompt_session")]
    return {name: sessions.count(name) for name in sorted(set(sessions))}


def prompt_sessions_line(name: str, chosen: dict[str, int]) -> str:
    """The markdown sentence saying which session ran a row's prompts (``prompt_sessions_chosen``)."""
    return (f"{name}: prompts ran in the session measured faster at start-up (the manifest allows either kernel), "
            "in the rounds' processes: " + ", ".join(f"{_session_name(k)} {n}x" for k, n in chosen.items()))


def run_bench(preset: str, batch: int, out: Path, repeats: int = 5, max_new: int = 32,
              recipes: tuple[str, ...] = RECIPES, progress=print, artifacts: Path | None = None,
              recipe_artifacts: dict[str, Path] | None = None, peer: bool = False,
              peer_prompt_tokens: int = 200, int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE,
              rounds: int = 3, draft: str | None = DEFAULT_DRAFT) -> dict:
    """``artifacts`` / ``recipe_artifacts``: existing FP32 / quantized artifacts of the same model to
    time instead of exporting and quantizing here (the demo passes its gated INT8 artifacts).
    ``int4_block_size``: the ``ort-cpu-int4`` row's blocks (and ORT GenAI's int4, to match).
    ``rounds``: every row is timed once per round, rows interleaved (PyTorch, runtime fp32, ...,
    PyTorch, ...); a row's ratio to PyTorch is the median over rounds of the within-round ratio. The
    machine's speed drifts by 20-30% over minutes (a shared VM: the same fp32 row measured 2.0x and
    2.7x PyTorch in two runs 30 minutes apart), so unpaired ratios measure the drift.
    ``draft``: at batch 1, a row of the FP32 runtime decoding speculatively with that recipe's row
    as its draft (:mod:`eov_edge.runtime.speculative`; FP32 answers); None: no such row."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    import onnxruntime
    import torch

    from eov_edge import manifest as mf
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.provenance import git_commit, weights_sha256
    from eov_edge.quantize.build import write_ungated
    from eov_edge.ship import NANO_CHECKPOINT

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 2)
    where = str(NANO_CHECKPOINT) if preset == "nano" else f"preset:{preset}"
    model, processor = _pytorch_model(where)
    rows_dirs = {}
    gates: dict[str, str] = {}
    fp32_exported = False  # the recipes' source was (re-)exported here: their cached folders are stale
    supplied = {None: artifacts} if artifacts is not None else {}
    supplied.update({recipe: Path(d) for recipe, d in (recipe_artifacts or {}).items() if recipe in recipes})
    weights_hash = weights_sha256(model)
    if supplied:
        for recipe, directory in supplied.items():
            gate = check_supplied_artifacts(Path(directory), weights_hash, recipe, int4_block_size)
            if recipe:
                gates[f"runtime {recipe}"] = gate_status(gate)
    if artifacts is None:
        # The CPU rows run ONNX Runtime's fused decoder (--decoder ort-cpu), the fastest here; the
        # portable decoder (the TensorRT engines' input) gets its own row.
        # Folders a run left in OUT/artifacts are timed again only while current (stale_cache).
        artifacts = out / "artifacts" / "fp32"
        for kind, folder in ((mf.ORT_CPU_DECODER, artifacts), (mf.PORTABLE_DECODER, out / "artifacts" / "fp32-portable")):
            if why := stale_cache(folder, weights_hash):
                progress(f"exporting {preset} to {folder} ({kind} decoder; the folder there: {why})")
                export_onnx(folder, model_and_processor=(model, processor), overwrite=True, validate=False,
                            checkpoint=NANO_CHECKPOINT if preset == "nano" else None,
                            preset=None if preset == "nano" else preset, decoder=kind)
                if folder == artifacts:
                    fp32_exported = True
            rows_dirs["runtime fp32" if kind == mf.ORT_CPU_DECODER else "runtime fp32 portable"] = folder
    else:
        rows_dirs["runtime fp32"] = Path(artifacts)
    for recipe in recipes:
        blocks = int4_block_size if recipe == "ort-cpu-int4" else None
        folder = int4_folder(recipe, blocks) if blocks else recipe
        if recipe in supplied:
            target = Path(supplied[recipe])
        else:
            target = out / "artifacts" / folder
            why = "its FP32 source was exported again" if fp32_exported else stale_cache(target, weights_hash)
            if why:
                progress(f"quantizing with {recipe} (no accuracy gate: speed and size only; the folder there: {why})")
                write_ungated(artifacts, recipe, target, int4_block_size=blocks)
        rows_dirs[f"runtime {recipe}"] = target
        gates.setdefault(f"runtime {recipe}", gate_status({}))
    drafts: dict[str, Path] = {}  # speculative row -> its draft's artifacts
    if draft and batch == 1 and f"runtime {draft}" in rows_dirs:
        fp32_manifest = mf.load_manifest(rows_dirs["runtime fp32"], verify_hashes=False)
        if fp32_manifest.decoder_kind != mf.ORT_CPU_DECODER:
            progress("no speculative row: the FP32 artifacts carry the portable decoder; drafts are checked by "
                     "ONNX Runtime's CPU decoder (eov-export onnx --decoder ort-cpu)")
        elif not any(t.name == mf.LOGITS_INDEX for t in fp32_manifest.graphs[mf.DECODER].inputs):
            progress("no speculative row: the FP32 artifacts' decoder returns the last position's logits only "
                     "(exported by an earlier eov-edge)")
        else:
            drafts[speculative_row(draft)] = rows_dirs[f"runtime {draft}"]
            rows_dirs[speculative_row(draft)] = rows_dirs["runtime fp32"]
    bandwidth = read_bandwidth_gbs()
    peak_gflops = compute_peak_gflops()
    prefill_gflop = first_token_gflop(model, processor, _samples(model.config.image_size, batch))
    progress(f"memory read bandwidth {bandwidth:.1f} GB/s, FP32 GEMM {peak_gflops:.0f} GFLOP/s; "
             "timing PyTorch eager generate()")
    timed: dict[str, list[dict]] = {"pytorch eager": [], **{name: [] for name in rows_dirs}}
    for round_index in range(rounds):
        # every other round in reverse: a drift of the machine's speed over a round then favours
        # no row against PyTorch (the ratios are paired within a round)
        for name in (list(timed) if round_index % 2 == 0 else list(timed)[::-1]):
            progress(f"timing {name}, round {round_index + 1}/{rounds}")
            timed[name].append(_timed_row("pytorch", where, batch, max_new, repeats) if name == "pytorch eager"
                               else _timed_row("runtime", str(rows_dirs[name]), batch, max_new, repeats,
                                               drafts.get(name)))
    rows = {name: _merge_rounds(runs) for name, runs in timed.items()}
    rows["pytorch eager"]["size_mb"] = round(_weights_mb(model), 2)
    rows["pytorch eager"]["decoder_mb"] = round(sum(p.numel() * p.element_size()
                                                    for p in model.language_model.parameters()) / 2**20, 2)
    rows["pytorch eager"]["peak_rss_mb"] = _peak("pytorch", where, batch, max_new)
    for name, directory in rows_dirs.items():
        rows[name]["peak_rss_mb"] = _peak("runtime", str(directory), batch, max_new, drafts.get(name))
    base = rows["pytorch eager"]
    for name, row in rows.items():
        decode_steps = max(row["new_tokens"] - 1, 1)
        decode_ms = max(row["e2e_ms"]["median"] - row["ttft_ms"]["median"], 0.0) / decode_steps
        floor_ms = row["decoder_mb"] * 2**20 / (bandwidth * 1e9) * 1000
        # The compute floor is an FP32 GEMM rate: quantized rows run other kernels (INT8 GEMM,
        # 4-bit unpacking), whose peak this run does not measure.
        fp32 = name in FP32_ROWS
        first_floor_ms = prefill_gflop / peak_gflops * 1000 if fp32 else None
        row.update({
            "first_token_floor_ms": round(first_floor_ms, 2) if fp32 else None,
            "first_token_vs_floor": round(row["ttft_ms"]["median"] / first_floor_ms, 2) if fp32 else None,
            "decode_ms_per_token": round(decode_ms, 3),
            "decode_tokens_per_s": round(batch * 1000 / decode_ms, 1) if decode_ms else None,
            "bandwidth_floor_ms": round(floor_ms, 3),
            "decode_vs_floor": round(decode_ms / floor_ms, 2) if floor_ms else None,
            # paired: each round's PyTorch median over this row's, then the median over rounds
            "speedup_e2e": round(statistics.median(b / r for b, r in zip(base["e2e_ms_rounds"], row["e2e_ms_rounds"])),
                                 3),
            "tokens_identical_to_pytorch": row["tokens"] == base["tokens"],
        })
        if name in drafts:  # the point of the row: the FP32 answer, token for token
            row["tokens_identical_to_fp32"] = row["tokens"] == rows["runtime fp32"]["tokens"]
    run_floors = fp32_floors(rows, prefill_gflop, peak_gflops)
    head_to_head = None
    if peer:
        from eov_edge.bench_peer import run_peer_bench

        precision_of = {"runtime fp32": "fp32", "runtime fp32 portable": "fp32-portable", "runtime ort-cpu-int8": "int8",
                        "runtime ort-cpu-int4": "int4"}
        ours = {precision_of[n]: d for n, d in rows_dirs.items() if n in precision_of}
        decoder_mb = {precision_of[n]: rows[n]["decoder_mb"] for n in rows_dirs if n in precision_of}
        head_to_head = run_peer_bench(model.language_model, ours, out, decoder_mb, bandwidth, batch,
                                      prompt_tokens=peer_prompt_tokens, max_new=max_new, repeats=repeats,
                                      rounds=max(PEER_MIN_ROUNDS, rounds), progress=progress,
                                      int4_block_size=int4_block_size)
    report = {
        "preset": preset, "batch": batch, "max_new_tokens": max_new, "repeats": repeats, "rounds": rounds,
        "int4_block_size": int4_block_size, "model": where,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "read_bandwidth_gbs": round(bandwidth, 2), "fp32_gemm_gflops": round(peak_gflops, 1),
                    "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "git_commit": git_commit(),
        "rows": {name: {k: v for k, v in row.items() if k != "tokens"} for name, row in rows.items()},
        "floors": run_floors,
        "quantized_rows_accuracy": gates,
        "note": "quantized rows made here are not gated (speed and size only); their accuracy is in the "
                "quant_report.json of eov-export quantize, and rows given gate-accepted artifacts "
                "(--recipe-artifacts) say so",
    }
    if head_to_head is not None:
        import onnxruntime_genai

        report["machine"]["onnxruntime_genai"] = onnxruntime_genai.__version__
        report["decoder_head_to_head"] = head_to_head
    write_json_atomic(out / "bench.json", report)
    write_atomic(out / "bench.md", markdown(report))
    chart(report, out / "bench.png")
    return report


def _session_name(runner: str) -> str:
    """The prompt session's name for people: the runner name of Pipeline.choose_prompt_session."""
    from eov_edge import manifest as mf

    return "decode session (int8-compute kernel)" if runner == mf.DECODER else "prefill session (fp32-compute kernel)"


def fp32_floors(rows: dict, first_token_gflop: float, gemm_gflops: float) -> dict:
    """The most any FP32 row can show against this run's PyTorch (``rows["pytorch eager"]``): the
    first token at the GEMM rate, every decode step at the weight-streaming rate (the FP32 runtime
    row's ``bandwidth_floor_ms``: its decoder's weight bytes)."""
    base = rows["pytorch eager"]
    fp32 = next(rows[n] for n in FP32_ROWS if n in rows)
    decode_steps = max(fp32["new_tokens"] - 1, 1)  # as that row's decode ms/token counts them
    floor_ms = first_token_gflop / gemm_gflops * 1000 + decode_steps * fp32["bandwidth_floor_ms"]
    return {"first_token_gflop": round(first_token_gflop, 3), "fp32_gemm_gflops": round(gemm_gflops, 1),
            "fp32_e2e_floor_ms": round(floor_ms, 1),
            "fp32_speedup_at_floors": round(base["e2e_ms"]["median"] / floor_ms, 2)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# eov-bench: {report['preset']}, batch {report['batch']}, up to {report['max_new_tokens']} new tokens",
             "", f"{m['cpus']} CPU(s), {m['platform']}, memory read {m['read_bandwidth_gbs']} GB/s; "
             f"{report.get('rounds', 1)} interleaved round(s) of {report['repeats']} runs after a warm-up per row: "
             "median over rounds of each round's median (min-max of all runs in brackets); x PyTorch is paired, "
             "the median over rounds of the ratio within a round"
             + (f"; ort-cpu-int4 in blocks of {report['int4_block_size']} weights" if "runtime ort-cpu-int4"
                in report["rows"] and report.get("int4_block_size") else "") + ".", "",
             "| backend | end to end ms | x PyTorch | first token ms (floor) | encoder ms | decode ms/token (floor) | "
             "peak RSS MiB | size MiB | tokens = PyTorch |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        e = r["e2e_ms"]
        first_floor = f" ({r['first_token_floor_ms']:.1f})" if r.get("first_token_floor_ms") is not None else ""
        lines.append(f"| {name} | {e['median']:.1f} [{e['min']:.1f}-{e['max']:.1f}] | {r['speedup_e2e']:.2f} | "
                     f"{r['ttft_ms']['median']:.1f}{first_floor} | {r['encoder_ms']['median']:.1f} | {r['decode_ms_per_token']:.2f} "
                     f"({r['bandwidth_floor_ms']:.2f}) | {r['peak_rss_mb']} | {r['size_mb']} | "
                     f"{'yes' if r['tokens_identical_to_pytorch'] else 'no'} |")
    if f := report.get("floors"):
        lines += ["", f"Floors of this run. First token: {f['first_token_gflop']:.2f} GFLOP (encoder, projector and "
                  "the prompt through the decoder, logits at its last position; torch.utils.flop_counter) at "
                  f"{f['fp32_gemm_gflops']:.0f} GFLOP/s (ONNX Runtime's FP32 MatMul, 1024^3, every core); decode: "
                  f"decoder weight bytes at {m['read_bandwidth_gbs']} GB/s. An FP32 runtime at both floors would "
                  f"take {f['fp32_e2e_floor_ms']:.1f} ms end to end: {f['fp32_speedup_at_floors']:.2f}x this run's "
                  "PyTorch, the most any FP32 row can show here."]
    slow = [(n, r) for n, r in report["rows"].items() if (r.get("decode_vs_floor") or 0) > FLOOR_TARGET]
    if slow:
        lines += ["", f"Decode steps above {FLOOR_TARGET}x their floor, and why:"]
        lines += [f"- {n}: {r['decode_vs_floor']}x ({_floor_reason(n)})" for n, r in slow]
    for name, r in report["rows"].items():
        if spec := r.get("speculative"):
            calls = spec["rounds"] + 1  # the prefill, then one check per round
            lines += ["", f"{name}: the FP32 decoder checks what the {name.split(' + ')[1]} proposes, up to "
                      f"{spec['draft_tokens']} tokens per call; tokens = the FP32 row's: "
                      f"{'yes' if r.get('tokens_identical_to_fp32') else 'NO'}. In its last run the draft proposed "
                      f"{spec['drafted']} tokens, {spec['accepted']} kept (acceptance {spec['acceptance']}): "
                      f"{r['new_tokens']} tokens in {calls} FP32 decoder calls. Its speed is the acceptance's: "
                      "a model whose answer repeats one token (random weights) accepts everything, a trained "
                      "model's drafts miss more often."]
    for name, r in report["rows"].items():
        if chosen := r.get("prompt_session_chosen"):
            lines += ["", prompt_sessions_line(name, chosen) + f"; the first round's timing of a {r['prompt_session']['prompt_tokens']}-token prompt: "
                      + ", ".join(f"{_session_name(k)} {ms} ms" for k, ms in r["prompt_session"]["ms"].items())
                      + "."]
    if report.get("quantized_rows_accuracy"):
        lines += ["", "Accuracy of the quantized rows (from their manifests):"]
        lines += [f"- {name}: {status}" for name, status in report["quantized_rows_accuracy"].items()]
    lines += ["", report["note"], ""]
    if report.get("decoder_head_to_head"):
        from eov_edge.bench_peer import peer_markdown

        lines.append(peer_markdown(report["decoder_head_to_head"]))
    return "\n".join(lines)


# Rows the FP32 GEMM floor applies to, the runtime's first: fp32_floors takes the first present
FP32_ROWS = ("runtime fp32", "runtime fp32 portable", "pytorch eager")
FLOOR_TARGET = 1.5  # decode ms/token against the weight-streaming floor (the benchmark issue's target)


def _floor_reason(row: str) -> str:
    if row.endswith("draft"):
        return ("speculative: draft steps and checks on top of the FP32 work; it pays only where an FP32 step "
                "costs several draft steps and most proposals are kept (acceptance below)")
    if row.startswith("pytorch"):
        return "eager PyTorch: one kernel launch and allocation per op, the KV cache grown by concatenation"
    if "int8" in row:
        return ("dynamic INT8 quantizes every MatMul's activations at run time and accumulates in int32: "
                "compute and extra ops on top of a quarter of the fp32 weight bytes")
    if "int4" in row:
        return "MatMulNBits unpacks 4-bit blocks and their scales in the kernel: compute per weight byte is high"
    return "per-op and per-step overhead (graph ops besides the MatMuls, the Python loop) on a short step"


def chart(report: dict, path: Path) -> None:
    """Bar chart of end-to-end ms per backend (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    values = [report["rows"][n]["e2e_ms"]["median"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names, values, color=["#888888"] + ["#2a7ab0"] * (len(names) - 1))
    for y, (v, n) in enumerate(zip(values, names)):
        ax.text(v, y, f" {v:.0f} ms ({report['rows'][n]['speedup_e2e']:.2f}x)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("end to end ms (median), lower is better")
    ax.set_title(f"{report['preset']}, batch {report['batch']}")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def parse_recipe_artifacts(values: tuple[str, ...], recipes: tuple[str, ...]) -> dict[str, Path]:
    """``RECIPE=DIR`` options into {recipe: folder}; each recipe once, among those timed."""
    given: dict[str, Path] = {}
    for value in values:
        recipe, sep, folder = value.partition("=")
        if not sep or not folder:
            raise click.UsageError(f"--recipe-artifacts {value!r}: write RECIPE=DIR, e.g. ort-cpu-int8=artifacts/nano-int8")
        if recipe not in recipes:
            raise click.UsageError(f"--recipe-artifacts {value!r}: {recipe!r} is not among the timed recipes "
                                   f"({', '.join(recipes) or 'none'})")
        if recipe in given:
            raise click.UsageError(f"--recipe-artifacts: {recipe} given twice")
        if not Path(folder).is_dir():
            raise click.UsageError(f"--recipe-artifacts {value!r}: {folder} is not a folder")
        given[recipe] = Path(folder)
    return given


@click.command()
@click.option("--preset", type=click.Choice(["nano", "small"]), default="nano", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="interleaved rounds of every row; x PyTorch is the median of the within-round ratios "
                   "(the decoder head to head runs at least 4)")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--recipes", default=",".join(RECIPES), show_default=True, help="comma-separated, or empty")
@click.option("--peer/--no-peer", default=None,
              help="decoder head to head with ONNX Runtime GenAI [default: on when onnxruntime-genai is installed]")
@click.option("--peer-prompt-tokens", type=int, default=200, show_default=True)
@click.option("--int4-block-size", type=click.Choice([str(size) for size in INT4_BLOCK_SIZES]),
              default=str(DEFAULT_INT4_BLOCK_SIZE), show_default=True,
              help="weights per scale of the ort-cpu-int4 row and of ORT GenAI's int4")
@click.option("--artifacts", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="FP32 artifacts of this preset's model to time (default: export them here, fused CPU and "
                   "portable decoders)")
@click.option("--recipe-artifacts", multiple=True, metavar="RECIPE=DIR",
              help="quantized artifacts to time for RECIPE, e.g. gate-accepted ones from eov-export quantize "
                   "(default: quantize here without the gate); repeatable")
@click.option("--draft", default=None,
              help=f"at batch 1, also time the FP32 runtime decoding speculatively with this recipe's row as its "
                   f"draft (empty: no such row) [default: {DEFAULT_DRAFT} when that recipe is timed]")
def main(preset: str, batch: int, out: Path, repeats: int, rounds: int, max_new_tokens: int, recipes: str,
         peer: bool | None, peer_prompt_tokens: int, int4_block_size: str, artifacts: Path | None,
         recipe_artifacts: tuple[str, ...], draft: str | None) -> None:
    """Benchmark PyTorch eager, the FP32 runtime and the CPU quantization recipes in one run."""
    from eov_edge.bench_peer import genai_available

    chosen = tuple(r for r in recipes.split(",") if r)
    unknown = [r for r in chosen if r not in RECIPES]
    if unknown:
        raise click.UsageError(f"unknown recipes {unknown}; eov-bench times {', '.join(RECIPES)}")
    given = parse_recipe_artifacts(recipe_artifacts, chosen)
    if draft is None:
        draft = DEFAULT_DRAFT if DEFAULT_DRAFT in chosen else ""
    elif draft and draft not in chosen:
        raise click.UsageError(f"--draft {draft}: not among the timed recipes ({', '.join(chosen) or 'none'})")
    missing = genai_available()
    if peer and missing:
        raise click.UsageError(missing)
    if peer is None:
        peer = missing is None
        if missing:
            click.echo(f"no decoder head to head: {missing}", err=True)
    try:
        report = run_bench(preset, batch, out, repeats, max_new_tokens, chosen,
                           progress=lambda m: click.echo(m, err=True), peer=peer, peer_prompt_tokens=peer_prompt_tokens,
                           int4_block_size=int(int4_block_size), rounds=rounds, artifacts=artifacts,
                           recipe_artifacts=given, draft=draft or None)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
