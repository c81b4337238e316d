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
loop beside ONNX Runtime GenAI's on the same decoder weights (:mod:`eov_edge.bench.peer`); with
``llama-cpp-python`` and ``gguf`` installed (``--llamacpp``, the default then), a third beside
llama.cpp's at F32, Q8_0, Q4_0 and Q4_K_M, with 1 thread and with every core
(:mod:`eov_edge.bench.llamacpp`).

Every row is measured in a fresh process (:mod:`eov_edge.bench.worker`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import click

from eov_edge.bench.artifacts import prepare_row_artifacts
from eov_edge.bench.llamacpp import llamacpp_available, run_llamacpp_bench
from eov_edge.bench.measure import (
    bench_samples,
    compute_peak_gflops,
    first_token_gflop,
    pytorch_model,
    read_bandwidth_gbs,
    weights_mb,
)
from eov_edge.bench.peer import PEER_MIN_ROUNDS, genai_available, run_peer_bench
from eov_edge.bench.report import chart, fp32_floors, markdown
from eov_edge.bench.rows import DEFAULT_DRAFT, RECIPES, Row, merge_rounds
from eov_edge.bench.worker import WorkerError, run_worker
from eov_edge.core.errors import EOVError
from eov_edge.core.paths import write_atomic, write_json_atomic
from eov_edge.core.provenance import git_commit
from eov_edge.quantize.recipes import DEFAULT_INT4_BLOCK_SIZE, INT4_BLOCK_SIZES


def run_bench(preset: str, batch: int, out: Path, repeats: int = 5, max_new: int = 32,
              recipes: tuple[str, ...] = RECIPES, progress=print, artifacts: Path | None = None,
              recipe_artifacts: dict[str, Path] | None = None, peer: bool = False,
              peer_prompt_tokens: int = 200, int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE,
              rounds: int = 3, draft: str | None = DEFAULT_DRAFT, questions: int | None = None,
              llamacpp: bool = False) -> dict:
    """``artifacts`` / ``recipe_artifacts``: existing FP32 / quantized artifacts of the same model to
    time instead of exporting and quantizing here (the demo passes its gated INT8 artifacts).
    ``int4_block_size``: the ``ort-cpu-int4`` row's blocks (and ORT GenAI's int4, to match).
    ``rounds``: every row is timed once per round, rows interleaved (PyTorch, runtime fp32, ...,
    PyTorch, ...); a row's ratio to PyTorch is the median over rounds of the within-round ratio. The
    machine's speed drifts by 20-30% over minutes (a shared VM: the same fp32 row measured 2.0x and
    2.7x PyTorch in two runs 30 minutes apart), so unpaired ratios measure the drift.
    ``draft``: at batch 1, a row of the FP32 runtime decoding speculatively with that recipe's row
    as its draft (:mod:`eov_edge.runtime.speculative`; FP32 answers); None: no such row.
    ``questions``: instead of the table, N questions about one image (:mod:`eov_edge.bench.questions`)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    import torch

    from eov_edge.core.paths import NANO_CHECKPOINT

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 2)
    where = str(NANO_CHECKPOINT) if preset == "nano" else f"preset:{preset}"
    model, processor = pytorch_model(where)
    made = prepare_row_artifacts(model, processor, preset, out, recipes, artifacts, recipe_artifacts or {}, batch,
                                 int4_block_size, draft if not questions else None, progress)
    if questions:
        return _questions_report(model, where, made.folders, out, questions, repeats, rounds, progress, peer, preset)
    bandwidth = read_bandwidth_gbs()
    peak_gflops = compute_peak_gflops()
    prefill_gflop = first_token_gflop(model, processor, bench_samples(model.config.image_size, batch))
    progress(f"memory read bandwidth {bandwidth:.1f} GB/s, FP32 GEMM {peak_gflops:.0f} GFLOP/s; "
             "timing PyTorch eager generate()")
    where_of = {Row.PYTORCH: where, **{row: str(folder) for row, folder in made.folders.items()}}

    def worker_arguments(row: Row) -> dict:
        draft_folder = made.drafts.get(row)
        return {"kind": "pytorch" if row is Row.PYTORCH else "runtime", "where": where_of[row], "batch": batch,
                "max_new": max_new, "draft": str(draft_folder) if draft_folder else None}

    timed: dict[Row, list[dict]] = {row: [] for row in where_of}
    for round_index in range(rounds):
        # every other round in reverse: a drift of the machine's speed over a round then favours
        # no row against PyTorch (the ratios are paired within a round)
        for row in (list(timed) if round_index % 2 == 0 else list(timed)[::-1]):
            progress(f"timing {row.value}, round {round_index + 1}/{rounds}")
            timed[row].append(run_worker("row", repeats=repeats, **worker_arguments(row)))
    rows = {row: merge_rounds(runs) for row, runs in timed.items()}
    base = rows[Row.PYTORCH]
    base["size_mb"] = round(weights_mb(model), 2)
    base["decoder_mb"] = round(sum(p.numel() * p.element_size() for p in model.language_model.parameters()) / 2**20, 2)
    for row in rows:
        try:
            rows[row]["peak_rss_mb"] = round(run_worker("peak", **worker_arguments(row))["peak_rss_mb"], 1)
        except WorkerError as err:
            progress(f"no peak RSS for {row.value}: {err}")
            rows[row]["peak_rss_mb"] = None
    for row, measured in rows.items():
        add_derived_figures(row, measured, base, rows, batch, bandwidth, prefill_gflop / peak_gflops * 1000)
    report = {
        "preset": preset, "batch": batch, "max_new_tokens": max_new, "repeats": repeats, "rounds": rounds,
        "int4_block_size": int4_block_size, "model": where, "machine": machine_facts(bandwidth, peak_gflops),
        "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
        "rows": {row.value: {k: v for k, v in measured.items() if k != "tokens"} for row, measured in rows.items()},
        "floors": fp32_floors({row.value: measured for row, measured in rows.items()}, prefill_gflop, peak_gflops),
        "quantized_rows_accuracy": {row.value: status for row, status in made.gates.items()},
        "note": "quantized rows made here are not gated (speed and size only); their accuracy is in the "
                "quant_report.json of eov-export quantize, and rows given gate-accepted artifacts "
                "(--recipe-artifacts) say so",
    }
    if peer:
        import onnxruntime_genai

        ours = {row.peer_precision: folder for row, folder in made.folders.items() if row.peer_precision}
        decoder_mb = {row.peer_precision: rows[row]["decoder_mb"] for row in made.folders if row.peer_precision}
        report["machine"]["onnxruntime_genai"] = onnxruntime_genai.__version__
        report["decoder_head_to_head"] = run_peer_bench(
            model.language_model, ours, out, decoder_mb, bandwidth, batch, prompt_tokens=peer_prompt_tokens,
            max_new=max_new, repeats=repeats, rounds=max(PEER_MIN_ROUNDS, rounds), progress=progress,
            int4_block_size=int4_block_size)
    if llamacpp and batch == 1:
        ours = {row.peer_precision: folder for row, folder in made.folders.items()
                if row.peer_precision in ("fp32", "int8", "int4")}
        decoder_mb = {row.peer_precision: rows[row]["decoder_mb"] for row in made.folders
                      if row.peer_precision in ("fp32", "int8", "int4")}
        report["llamacpp"] = run_llamacpp_bench(
            model, processor, ours, out, decoder_mb, bandwidth, prompt_tokens=peer_prompt_tokens, max_new=max_new,
            repeats=repeats, rounds=max(PEER_MIN_ROUNDS, rounds), progress=progress)
    elif llamacpp:
        progress("no llama.cpp head to head: it runs at batch 1 (the comparison is one answer's decode)")
    write_json_atomic(out / "bench.json", report)
    write_atomic(out / "bench.md", markdown(report))
    chart(report, out / "bench.png")
    return report


def _questions_report(model, where: str, folders: dict, out: Path, n: int, repeats: int, rounds: int, progress,
                      peer: bool, preset: str) -> dict:
    import onnxruntime

    from eov_edge.bench.questions import questions_chart, questions_markdown, run_questions_bench

    section = run_questions_bench(model.language_model, where, folders, out, n, repeats, rounds, progress, peer)
    report = {"preset": preset, "batch": 1, "model": where, "git_commit": git_commit(),
              "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "onnxruntime": onnxruntime.__version__},
              "questions": section}
    if peer:
        import onnxruntime_genai

        report["machine"]["onnxruntime_genai"] = onnxruntime_genai.__version__
    text = (f"# eov-bench --questions {n}: {preset}, {report['date']}, commit {report['git_commit'][:7]}, "
            f"{report['machine']['cpus']} CPU(s)\n\n" + questions_markdown(section))
    write_json_atomic(out / "bench.json", report)
    write_atomic(out / "bench.md", text)
    questions_chart(section, out / "questions.png")
    return report


def add_derived_figures(row: Row, measured: dict, base: dict, rows: dict[Row, dict], batch: int,
                        bandwidth_gbs: float, first_token_floor_ms: float) -> None:
    """Decode ms/token and tokens/s, the floors and the row against them, the paired speed-up over
    PyTorch (each round's PyTorch median over this row's, then the median over rounds) and token
    identity (with PyTorch; a speculative row also with the FP32 row, the point of that row)."""
    decode_steps = max(measured["new_tokens"] - 1, 1)
    decode_ms = max(measured["e2e_ms"]["median"] - measured["ttft_ms"]["median"], 0.0) / decode_steps
    floor_ms = measured["decoder_mb"] * 2**20 / (bandwidth_gbs * 1e9) * 1000
    # The compute floor is an FP32 GEMM rate: quantized rows run other kernels (INT8 GEMM, 4-bit
    # unpacking), whose peak this run does not measure.
    fp32 = row.fp32
    measured.update({
        "first_token_floor_ms": round(first_token_floor_ms, 2) if fp32 else None,
        "first_token_vs_floor": round(measured["ttft_ms"]["median"] / first_token_floor_ms, 2) if fp32 else None,
        "decode_ms_per_token": round(decode_ms, 3),
        "decode_tokens_per_s": round(batch * 1000 / decode_ms, 1) if decode_ms else None,
        "bandwidth_floor_ms": round(floor_ms, 3),
        "decode_vs_floor": round(decode_ms / floor_ms, 2) if floor_ms else None,
        "speedup_e2e": round(statistics.median(b / r for b, r in zip(base["e2e_ms_rounds"],
                                                                     measured["e2e_ms_rounds"])), 3),
        "tokens_identical_to_pytorch": measured["tokens"] == base["tokens"],
    })
    if row.draft_recipe:
        measured["tokens_identical_to_fp32"] = measured["tokens"] == rows[Row.FP32]["tokens"]


def machine_facts(bandwidth_gbs: float, gemm_gflops: float) -> dict:
    import onnxruntime
    import torch

    from eov_edge.core.provenance import cpu_model

    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
            "read_bandwidth_gbs": round(bandwidth_gbs, 2), "fp32_gemm_gflops": round(gemm_gflops, 1),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


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
@click.option("--llamacpp/--no-llamacpp", default=None,
              help="decoder head to head with llama.cpp, batch 1 [default: on when llama-cpp-python is installed]")
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
@click.option("--questions", type=click.IntRange(min=2), default=None,
              help="instead of the table: N different questions about one image, asked one by one, together, with the "
                   "shared prefix reused (short and long answers), against PyTorch and ORT GenAI (batch 1)")
@click.option("--draft", default=None,
              help=f"at batch 1, also time the FP32 runtime decoding speculatively with this recipe's row as its "
                   f"draft (empty: no such row) [default: {DEFAULT_DRAFT} when that recipe is timed]")
def main(preset: str, batch: int, out: Path, repeats: int, rounds: int, max_new_tokens: int, recipes: str,
         peer: bool | None, llamacpp: bool | None, peer_prompt_tokens: int, int4_block_size: str, artifacts: Path | None,
         recipe_artifacts: tuple[str, ...], draft: str | None, questions: int | None) -> None:
    """Benchmark PyTorch eager, the FP32 runtime and the CPU quantization recipes in one run."""
    chosen = tuple(r for r in recipes.split(",") if r)
    unknown = [r for r in chosen if r not in RECIPES]
    if unknown:
        raise click.UsageError(f"unknown recipes {unknown}; eov-bench times {', '.join(RECIPES)}")
    given = parse_recipe_artifacts(recipe_artifacts, chosen)
    if draft is None:
        draft = DEFAULT_DRAFT if DEFAULT_DRAFT in chosen else ""
    elif draft and draft not in chosen:
        raise click.UsageError(f"--draft {draft}: not among the timed recipes ({', '.join(chosen) or 'none'})")
    peer = _peer_switch(peer, genai_available(), "decoder head to head")
    llamacpp = _peer_switch(llamacpp, llamacpp_available(), "llama.cpp head to head")
    try:
        report = run_bench(preset, batch, out, repeats, max_new_tokens, chosen,
                           progress=lambda m: click.echo(m, err=True), peer=peer, peer_prompt_tokens=peer_prompt_tokens,
                           int4_block_size=int(int4_block_size), rounds=rounds, artifacts=artifacts,
                           recipe_artifacts=given, draft=draft or None, questions=questions, llamacpp=llamacpp)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    if questions:
        from eov_edge.bench.questions import questions_markdown

        click.echo(questions_markdown(report["questions"]))
        return
    click.echo(markdown(report))


def _peer_switch(asked: bool | None, missing: str | None, what: str) -> bool:
    """A peer section's flag: on where asked (refused if its package is missing), by default on
    where the package is installed (saying why not otherwise)."""
    if asked and missing:
        raise click.UsageError(missing)
    if asked is None:
        if missing:
            click.echo(f"no {what}: {missing}", err=True)
        return missing is None
    return asked


if __name__ == "__main__":
    main()
