"""``eov-export quantize``: FP32 artifacts -> quantized artifacts, accepted only through the accuracy gate.

    eov-export quantize --artifacts artifacts/nano --recipe ort-cpu-int8 --out artifacts/nano-int8

1. calibration feeds from ``calib_data`` (or ``--calib``: a samples folder or a held-out JSONL file)
   through the FP32 runtime;
2. the recipe's graphs quantized with the field's quantizers (:mod:`eov_edge.quantize.recipes`);
3. TensorRT recipes: the Q/DQ check (:mod:`eov_edge.quantize.checks`);
4. the gate: every task metric on held-out examples against FP32 (``--gate-data FILE.jsonl``, the
   user's own; by default the pack shipped in ``calib_data/heldout/``). Over budget, with
   ``--max-drop``, the most sensitive nodes (measured) go back to float, a few more each round,
   until the budget holds; otherwise the quantization is refused and no artifacts are written.
The output folder is a complete artifacts folder (same runtime, same CLI) whose manifest records the
recipe, the tools and versions per graph, the calibration samples and the gate's table;
``quant_report.json`` and ``quant_report.md`` sit beside it. Written to a temporary folder, renamed
into place only when accepted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from eov_edge.core import manifest as mf
from eov_edge.core.paths import staged_folder
from eov_edge.evaluation.examples import ExampleSet
from eov_edge.quantize import gate
from eov_edge.quantize.calibration import CalibrationSet, QuantizeError, calibration_set
from eov_edge.quantize.checks import tensorrt_qdq_problems
from eov_edge.quantize.recipes import (
    RECIPES,
    GraphPlan,
    Recipe,
    quantize_graph,
    recipe_plans,
    with_activations,
    with_int4_block_size,
)

REPORT_FILE = "quant_report.json"
MAX_FALLBACK_ROUNDS = 6


def _write_graphs(recipe: Recipe, source: Path, staging: Path, plans: dict[str, GraphPlan],
                  calibration: CalibrationSet | None) -> dict[str, dict]:
    tools = {}
    for graph in recipe.graphs:
        file = mf.GRAPH_FILES[graph]
        tools[graph] = quantize_graph(recipe, graph, source / file, staging / file, plans[graph], calibration)
    return tools


def _copy_artifacts(artifacts: Path, staging: Path, recipe: Recipe) -> None:
    """The FP32 artifacts (without their reports) as the start of the quantized folder."""
    shutil.copytree(artifacts, staging, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(REPORT_FILE, "quant_report.md", "verify_report.json"))
    _convert_embedding(staging, recipe.embedding_dtype)


def _convert_embedding(staging: Path, dtype: str) -> None:
    """Store the token embedding table in ``dtype`` (the runtime widens gathered rows to float32)."""
    import numpy as np

    path = staging / mf.EMBEDDING_FILE
    table = np.load(path)
    if table.dtype != np.dtype(dtype):
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, table.astype(dtype))
        os.replace(tmp, path)


def _update_manifest(staging: Path, recipe: Recipe, tools: dict, calibration: CalibrationSet | None,
                     gate_summary: dict) -> mf.Manifest:
    from eov_edge.export.ort_decoder import set_embedding_dtype

    manifest = mf.load_manifest(staging, verify_hashes=False)
    manifest.embedding["sha256"] = mf.sha256_file(staging / mf.EMBEDDING_FILE)
    manifest.embedding["dtype"] = recipe.embedding_dtype
    decoder = manifest.graphs[mf.DECODER]
    # the fused CPU decoder gathers decode steps' rows from the table the runtime binds: its input
    # takes the table's dtype (_convert_embedding); a portable decoder has no such input
    if set_embedding_dtype(staging / decoder.file, recipe.embedding_dtype):
        decoder.sha256 = mf.sha256_file(staging / decoder.file)
        for spec in decoder.inputs:
            if spec.name == mf.EMBED_TABLE:
                spec.dtype = recipe.embedding_dtype
    for graph in recipe.graphs:
        entry = manifest.graphs[graph]
        entry.sha256 = mf.sha256_file(staging / entry.file)
        entry.precision = recipe.precision
        _update_external_data(staging, entry)
    manifest.quantization = {
        "recipe": recipe.name, "target": recipe.target, "description": recipe.description, "graphs": tools,
        "calibration": calibration.summary() if calibration else None, "gate": gate_summary,
    }
    manifest.validation = {}  # the FP32 parity results do not describe these graphs; the gate does
    (staging / mf.MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def _update_external_data(staging: Path, entry: mf.GraphEntry) -> None:
    """Point ``entry`` at the external data file its quantized graph reads, if any, and remove the
    FP32 graph's file copied with the artifacts where nothing reads it any more: the quantizers
    write their graphs whole, and eov-2b's FP32 decoder data (6 GB) would otherwise ship with, and
    be hashed for, a 1 GB INT4 decoder."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(staging / entry.file), load_external_data=False)
    locations = {e.value for t in model.graph.initializer if uses_external_data(t)
                 for e in t.external_data if e.key == "location"}
    if len(locations) > 1:
        raise QuantizeError(f"{entry.file}: weights in several external files {sorted(locations)}; expected one")
    location = next(iter(locations), None)
    if entry.external_data and entry.external_data != location:
        (staging / entry.external_data).unlink(missing_ok=True)
    entry.external_data = location
    entry.external_data_sha256 = mf.sha256_file(staging / location) if location else None


def _sensitivity(recipe: Recipe, source: Path, plans: dict[str, GraphPlan], calibration: CalibrationSet,
                 work: Path) -> list[tuple[float, str, str]]:
    """(relative output error, graph, node) for each quantized node, quantized alone; largest first."""
    work.mkdir(parents=True, exist_ok=True)
    scores = []
    for graph in recipe.graphs:
        plan = plans[graph]
        for node in plan.quantized:
            alone = GraphPlan(plan.quantizable, plan.lm_head, [n for n in plan.quantizable if n != node])
            target = work / f"sensitivity-{graph}.onnx"
            quantize_graph(recipe, graph, source / mf.GRAPH_FILES[graph], target, alone, calibration)
            error = gate.output_error(source / mf.GRAPH_FILES[graph], target, calibration.feeds[graph])
            scores.append((error, graph, node))
    return sorted(scores, reverse=True)


def quantize_artifacts(artifacts: Path, recipe_name: str, out: Path, calib_dir: Path | None = None,
                       max_drop: float | None = None, per_task: int | None = None,
                       gate_data: ExampleSet | Path | None = None,
                       overwrite: bool = False, quantize_lm_head: bool | None = None, progress=print,
                       int4_block_size: int | None = None, fallback: bool = True,
                       activations: str | None = None) -> dict:
    """Quantize, gate and publish; returns the report (also written to ``out/quant_report.json``).

    ``max_drop``: the budget in points per task metric (None: the recipe's default). ``fallback``:
    when a task breaks the budget, put the most sensitive nodes back in float, round by round, until
    it holds (False: refuse at the first broken round). ``int4_block_size`` overrides an INT4
    recipe's block (refused for the others); ``activations`` ("fp16", "fp32") what the TensorRT Q/DQ
    recipes carry between their pairs. ``gate_data``: held-out examples (an example set, or a
    JSONL file or folder; None: the shipped pack), at most ``per_task`` of each task (None: all)."""
    from eov_edge.evaluation.scoring import score_predictions

    if recipe_name not in RECIPES:
        raise QuantizeError(f"unknown recipe {recipe_name!r}; choose one of {', '.join(RECIPES)}")
    recipe = with_activations(with_int4_block_size(RECIPES[recipe_name], int4_block_size), activations)
    artifacts, out = Path(artifacts), Path(out)
    if out.resolve() == artifacts.resolve():
        raise QuantizeError("--out must differ from --artifacts (the FP32 artifacts are the gate's reference)")
    if out.exists() and not overwrite:
        raise QuantizeError(f"{out} exists; pass --overwrite to replace it")
    manifest = mf.load_manifest(artifacts)  # the FP32 files' hashes checked here, once for the whole run
    check_decoder_kind(recipe, manifest, artifacts)
    budget = max_drop if max_drop is not None else recipe.default_max_drop
    started = time.time()

    progress(f"calibration: running the FP32 pipeline on the samples of {calib_dir or 'calib_data/'}")
    calibration = calibration_set(artifacts, calib_dir, verify_hashes=False)
    plans = recipe_plans(recipe, artifacts, quantize_lm_head)

    held_out, dropped = gate.gate_set(gate_data, manifest.image_size, per_task, calibration)
    examples, train = held_out.examples, held_out.baseline_examples
    not_gated = gate.tasks_not_gated(held_out)
    progress(f"gate: {len(examples)} held-out examples from {held_out.name} ({dropped} dropped for sharing a "
             f"calibration file)" + (f"; not gated, the set has no example of: {', '.join(not_gated)}"
                                     if not_gated else ""))
    fp32_answers = gate.answer_examples(artifacts, examples, verify_hashes=False)
    fp32_report = score_predictions(fp32_answers, examples, train, manifest.image_size)

    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(out) as staging, tempfile.TemporaryDirectory(dir=out.parent) as sensitivity_dir:
        _copy_artifacts(artifacts, staging, recipe)
        rounds, in_float, sensitivity = [], [], None
        while True:
            tools = _write_graphs(recipe, artifacts, staging, plans, calibration if recipe.needs_calibration else None)
            problems = {}
            if recipe.for_tensorrt:
                problems = {g: p for g in recipe.graphs
                            if (p := tensorrt_qdq_problems(staging / mf.GRAPH_FILES[g], recipe.target,
                                                           expect_qdq=bool(plans[g].quantized)))}
                if problems:
                    raise QuantizeError(f"{recipe.name}: graphs TensorRT would reject: {json.dumps(problems, indent=1)}")
            _update_manifest(staging, recipe, tools, calibration, {})
            answers = gate.answer_examples(staging, examples, prefill_session=True, verify_hashes=False)
            q_report = score_predictions(answers, examples, train, manifest.image_size)
            rows = gate.compare(fp32_report, q_report, budget)
            broken = gate.broken_tasks(rows)
            intervals = {t: gate.drop_intervals(t, [r.metric for r in rows if r.task == t and not r.ok], fp32_answers,
                                                answers, examples, manifest.image_size) for t in broken}
            over = [{"task": r.task, "metric": r.metric, "drop": r.drop, "ci95": list(intervals[r.task][r.metric])}
                    for r in rows if not r.ok]
            rounds.append({"float_nodes": {g: list(plans[g].excluded) for g in recipe.graphs},
                           "broken_tasks": broken, "worst_drop": max((r.drop for r in rows), default=0.0),
                           "changed_answers": gate.changed_answers(fp32_answers, answers, examples),
                           "over_budget": over})
            progress(f"gate round {len(rounds)}: worst drop {rounds[-1]['worst_drop']:+.2f} points, "
                     f"broken: {broken or 'none'}"
                     + "".join(f"; {o['task']} {o['metric']} {o['drop']:+.2f} (95% paired interval "
                               f"{o['ci95'][0]:+.2f} to {o['ci95'][1]:+.2f})" for o in over))
            if not broken:
                break
            if not fallback or len(rounds) > MAX_FALLBACK_ROUNDS:
                _refuse(out, recipe, rows, rounds, budget, fallback)
            if sensitivity is None:
                progress("measuring per-node sensitivity for the fallback")
                sensitivity = _sensitivity(recipe, artifacts, plans, calibration, Path(sensitivity_dir))
            remaining = [(e, g, n) for e, g, n in sensitivity if n not in plans[g].excluded]
            if not remaining:
                _refuse(out, recipe, rows, rounds, budget, fallback)
            take = remaining[: 2 ** (len(rounds) - 1)]  # 1, 2, 4, ... nodes back to float per round
            for error, graph, node in take:
                plans[graph].excluded.append(node)
                in_float.append({"graph": graph, "node": node, "relative_error_alone": round(error, 6)})
            if not any(plans[g].quantized for g in recipe.graphs):
                # the next round would gate the FP32 model itself and "accept" it under the recipe's name
                _refuse(out, recipe, rows, rounds, budget, fallback, all_float=True)
        gate_summary = {"budget_points": budget, "examples": len(examples), "examples_from": held_out.name,
                        "example_set": held_out.provenance, "per_task_counts": held_out.counts(),
                        "tasks_not_gated": not_gated, "dropped_for_calibration_overlap": dropped,
                        "rows": gate.rows_as_dicts(rows), "rounds": rounds, "fallback": in_float, "accepted": True}
        if tools.get(mf.DECODER, {}).get(mf.PREFILL_SESSION_CONFIG):
            # The prompt kernel the prefill session fixes is not the faster one on every CPU: gate the
            # accepted artifacts again with prompts in the decode session (its kernel), and let the
            # runtime take the faster of the two on the device only if this holds the budget too.
            progress("gate: the accepted artifacts again, prompts in the decode session")
            other = gate.answer_examples(staging, examples, prefill_session=False, verify_hashes=False)
            other_rows = gate.compare(fp32_report, score_predictions(other, examples, train, manifest.image_size),
                                      budget)
            other_ok = not gate.broken_tasks(other_rows)
            tools[mf.DECODER][mf.PROMPT_KERNEL_CHOICE] = mf.PROMPT_KERNEL_FASTEST if other_ok else mf.PROMPT_KERNEL_FIXED
            gate_summary["prompts_in_decode_session"] = {
                "accepted": other_ok, "worst_drop": max((r.drop for r in other_rows), default=0.0),
                "changed_answers": gate.changed_answers(answers, other, examples),
                "rows": gate.rows_as_dicts(other_rows)}
            progress(f"gate, prompts in the decode session: worst drop "
                     f"{gate_summary['prompts_in_decode_session']['worst_drop']:+.2f} points, "
                     f"{'accepted: the runtime takes the faster kernel' if other_ok else 'over budget: prompts stay in the prefill session'}")
        final = _update_manifest(staging, recipe, tools, calibration, gate_summary)
        mf.load_manifest(staging)  # the published folder's hashes, checked once before it is published
        sizes = {"fp32_bytes": _size(artifacts), "quantized_bytes": _size(staging)}
        report = {
            "recipe": recipe.name, "target": recipe.target, "artifacts": str(artifacts), "out": str(out),
            "accepted": True, "gate": gate_summary, "graphs": tools, "calibration": calibration.summary(),
            "size": dict(sizes, ratio=round(sizes["fp32_bytes"] / sizes["quantized_bytes"], 3)),
            "fp32_metrics": _strip(fp32_report), "quantized_metrics": _strip(q_report),
            "produced_by": final.produced_by, "seconds": round(time.time() - started, 1),
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1))
        (staging / "quant_report.md").write_text(_markdown(report, rows))
    return report


def check_decoder_kind(recipe: Recipe, manifest: mf.Manifest, artifacts: Path) -> None:
    """TensorRT recipes need the portable decoder (TensorRT cannot import ORT's contrib ops)."""
    if recipe.for_tensorrt and manifest.decoder_kind != mf.PORTABLE_DECODER:
        raise QuantizeError(f"{recipe.name} is for TensorRT, but {artifacts} holds ONNX Runtime's fused CPU decoder "
                            f"({manifest.decoder_kind}); quantize artifacts exported with --decoder portable")


def write_ungated(artifacts: Path, recipe_name: str, out: Path, calibration: CalibrationSet | None = None,
                  int4_block_size: int | None = None) -> Path:
    """Quantized artifacts WITHOUT the accuracy gate, for speed and size measurements only (eov-bench);
    the manifest says so. Never ship these: ``quantize_artifacts`` is the gated path."""
    recipe = with_int4_block_size(RECIPES[recipe_name], int4_block_size)
    artifacts, out = Path(artifacts), Path(out)
    check_decoder_kind(recipe, mf.load_manifest(artifacts, verify_hashes=False), artifacts)
    if recipe.needs_calibration and calibration is None:
        calibration = calibration_set(artifacts)
    plans = recipe_plans(recipe, artifacts)
    with staged_folder(out) as staging:
        _copy_artifacts(artifacts, staging, recipe)
        tools = _write_graphs(recipe, artifacts, staging, plans, calibration if recipe.needs_calibration else None)
        if tools.get(mf.DECODER, {}).get(mf.PREFILL_SESSION_CONFIG):
            # no accuracy claimed: the runtime may run prompts with whichever kernel is faster there
            tools[mf.DECODER][mf.PROMPT_KERNEL_CHOICE] = mf.PROMPT_KERNEL_FASTEST
        _update_manifest(staging, recipe, tools, calibration, {"skipped": "not gated: speed and size measurement only"})
    return out


def _refuse(out: Path, recipe: Recipe, rows, rounds, budget: float, fallback: bool,
            all_float: bool = False) -> None:
    """Raise the gate's refusal; ``all_float``: the fallback would have put every node back in float."""
    rejected = out.with_name(out.name + ".rejected.json")
    rejected.write_text(json.dumps({"recipe": recipe.name, "accepted": False, "budget_points": budget,
                                    "rows": gate.rows_as_dicts(rows), "rounds": rounds,
                                    "every_node_in_float": all_float}, indent=1))
    hint = ("raise --max-drop or try another recipe" if fallback
            else "drop --no-fallback to let the most sensitive layers fall back to float")
    if recipe.fp16_activations and all_float:
        hint += ("; or --activations fp32: the FP16 activations between the Q/DQ pairs move answers the "
                 "fallback cannot put back")
    broken = gate.broken_tasks(rows)
    changed = rounds[-1]["changed_answers"]
    # A metric on few examples moves in steps of one answer, which can exceed the budget: say so
    changed_text = ", ".join(f"{t} {changed[t][0]} of {changed[t][1]}" for t in broken if t in changed)
    why = f"{', '.join(broken)} dropped more than {budget:g} points"
    if all_float:
        in_float = sum(len(nodes) for nodes in rounds[-1]["float_nodes"].values())
        why = (f"holding the budget would take every quantizable node back to float, i.e. the FP32 model "
               f"(with {in_float} in float, {why})")
    over = rounds[-1].get("over_budget", [])
    within_noise = [f"{o['task']} {o['metric']}" for o in over if o["ci95"][0] <= 0.0]
    noise_text = (f" The 95% paired bootstrap interval of the drop reaches 0 for {', '.join(within_noise)}: "
                  f"those drops are within the luck of the draw, a larger --per-task tells." if within_noise else "")
    raise QuantizeError(
        f"{recipe.name} refused: {why} against FP32 ({hint}; report: {rejected})\n"
        f"{gate.table([r for r in rows if not r.ok])}\n"
        f"Answers that differ from FP32's: {changed_text}. Where a handful of answers make the drop, "
        f"a larger --per-task measures it in finer steps.{noise_text}"
    )


def _size(directory: Path) -> int:
    names = {mf.MANIFEST_FILE, REPORT_FILE, "quant_report.md", "verify_report.json"}
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name not in names)


def _strip(report: dict) -> dict:
    return {task: {k: v for k, v in scores.items() if k != "examples"} for task, scores in report["tasks"].items()}


def _markdown(report: dict, rows) -> str:
    size = report["size"]
    return (f"# {report['recipe']} ({report['target']})\n\nAccepted: {report['accepted']}; budget "
            f"{report['gate']['budget_points']:g} points; {report['gate']['examples']} held-out examples from "
            f"{report['gate']['examples_from']}" + (f"; not gated (no examples): {', '.join(report['gate']['tasks_not_gated'])}"
                                                    if report['gate']['tasks_not_gated'] else "") + ".\n\n"
            f"Size on disk: {size['fp32_bytes'] / 2**20:.1f} MiB FP32 -> {size['quantized_bytes'] / 2**20:.1f} MiB "
            f"({size['ratio']:.2f}x smaller).\n\n{gate.table(rows)}\n\nFallback to float: "
            f"{[f['node'] for f in report['gate']['fallback']] or 'none'}\n" + _prompt_kernel_line(report))


def _prompt_kernel_line(report: dict) -> str:
    other = report["gate"].get("prompts_in_decode_session")
    if other is None:
        return ""
    verdict = ("within budget: the runtime runs prompts with whichever kernel measures faster on the device"
               if other["accepted"] else "over budget: prompts stay in the prefill session")
    return (f"\nPrompts in the decode session (its kernel) instead of the prefill session: worst drop "
            f"{other['worst_drop']:+.2f} points, {verdict}.\n")


__all__ = ["QuantizeError", "quantize_artifacts"]
