"""The ``quantize`` command of ``eov-export``: a thin click layer over :mod:`eov_edge.quantize`."""

from __future__ import annotations

from pathlib import Path

import click

from eov_edge.core.errors import EOVError
from eov_edge.quantize.recipes import INT4_BLOCK_SIZES, RECIPES


@click.command("quantize")
@click.option("--artifacts", type=click.Path(path_type=Path), required=True, help="FP32 artifacts (eov-export onnx)")
@click.option("--recipe", type=click.Choice(list(RECIPES)),
              required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="quantized artifacts folder to create")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="calibration samples: a folder with a manifest.json (default: calib_data/), or a held-out "
                   "JSONL file (its views and questions; docs/evaluation.md)")
@click.option("--gate-data", type=click.Path(path_type=Path), default=None,
              help="held-out examples the gate scores, a JSONL file or a folder with one (docs/evaluation.md) "
                   "[default: the pack shipped in calib_data/heldout/]")
@click.option("--max-drop", type=float, default=None,
              help="accuracy budget in points per task metric [default: 1.0 for INT8/FP8, 2.0 for INT4]")
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="put the most sensitive layers back in float until every task holds the budget "
                   "(--no-fallback: refuse at the first broken task)")
@click.option("--per-task", type=click.IntRange(min=1), default=None,
              help="at most this many held-out examples per task [default: all]; one changed answer in 100 "
                   "moves a metric 1 point")
@click.option("--quantize-lm-head/--keep-lm-head", default=None,
              help="override the recipe's default for the LM head (TensorRT recipes keep it in float)")
@click.option("--int4-block-size", type=click.Choice([str(s) for s in INT4_BLOCK_SIZES]), default=None,
              help="weights per scale for ort-cpu-int4 and w4a16 [default: 32]; larger is faster on CPU (128: a "
                   "decode step in ~0.7x the time) but answers each request alone, not batched; the gate decides "
                   "if it holds")
@click.option("--activations", type=click.Choice(["fp16", "fp32"]), default=None,
              help="trt-int8 / trt-fp8: FP16 (default, TensorRT's fast path) or FP32 between the Q/DQ pairs; the "
                   "engine runs what the gate scored")
@click.option("--overwrite", is_flag=True)
def quantize_command(artifacts: Path, recipe: str, out: Path, calib: Path | None, gate_data: Path | None,
                     max_drop: float | None, fallback: bool, per_task: int | None, quantize_lm_head: bool,
                     int4_block_size: str | None, activations: str | None, overwrite: bool) -> None:
    """Quantize FP32 artifacts with a recipe; accepted only if every task metric holds (quant_report.json)."""
    from eov_edge.quantize.build import quantize_artifacts

    try:
        report = quantize_artifacts(artifacts, recipe, out, calib, max_drop, per_task, gate_data, overwrite=overwrite,
                                    quantize_lm_head=quantize_lm_head, progress=lambda m: click.echo(m, err=True),
                                    int4_block_size=int(int4_block_size) if int4_block_size else None,
                                    fallback=fallback, activations=activations)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    size = report["size"]
    click.echo(f"wrote {out}: {size['fp32_bytes'] / 2**20:.1f} MiB -> {size['quantized_bytes'] / 2**20:.1f} MiB "
               f"({size['ratio']:.2f}x smaller); worst metric drop "
               f"{max((r['drop'] for r in report['gate']['rows']), default=0):+.2f} points "
               f"(budget {report['gate']['budget_points']:g}); report: {out / 'quant_report.json'}")
