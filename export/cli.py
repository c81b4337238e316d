"""``eov-export``: build deployment artifacts from a checkpoint (thin click layer)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from eov_edge.errors import EOVError
from eov_edge.quantize.recipes import INT4_BLOCK_SIZES


@click.group()
def main() -> None:
    """Export Earth-OneVision checkpoints to ONNX (and, in later versions, TensorRT engines)."""


@main.command("onnx")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="checkpoint folder (default: the shipped nano checkpoint)")
@click.option("--preset", type=click.Choice(["nano", "small", "eov-2b"]), default=None,
              help="export this preset with random weights instead of a checkpoint")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="artifacts folder to create")
@click.option("--opset", default=18, show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing artifacts folder")
@click.option("--no-validate", is_flag=True, help="skip the parity checks (not recommended)")
@click.option("--decoder", type=click.Choice(["portable", "ort-cpu"]), default="portable", show_default=True,
              help="portable: standard ops (ONNX Runtime, TensorRT engines, every recipe); ort-cpu: ONNX Runtime's "
                   "fused kernels (decoder with a shared KV buffer, encoder with fused attention), fastest on CPU "
                   "(ONNX Runtime and its CPU recipes only)")
def onnx_command(checkpoint: Path | None, preset: str | None, out: Path, opset: int, overwrite: bool,
                 no_validate: bool, decoder: str) -> None:
    """Write encoder.onnx, projector.onnx, decoder.onnx, the embedding table, tokenizer and manifest."""
    from eov_edge.export.onnx_export import export_onnx, manifest_summary
    from eov_edge.ship import NANO_CHECKPOINT

    if checkpoint is None and preset is None:
        checkpoint = NANO_CHECKPOINT
    try:
        manifest = export_onnx(out, checkpoint=checkpoint, preset=preset, opset=opset, overwrite=overwrite,
                               validate=not no_validate, decoder=decoder)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {out}")
    click.echo(manifest_summary(manifest))


@main.command("quantize")
@click.option("--artifacts", type=click.Path(path_type=Path), required=True, help="FP32 artifacts (eov-export onnx)")
@click.option("--recipe", type=click.Choice(["ort-cpu-int8", "ort-cpu-int4", "trt-int8", "trt-fp8", "w4a16"]),
              required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="quantized artifacts folder to create")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="calibration samples folder with a manifest.json (default: calib_data/)")
@click.option("--max-drop", type=float, default=None,
              help="accuracy budget in points per task metric; enables the fallback of sensitive layers to float "
                   "(default budget: 1.0 for INT8/FP8, 2.0 for INT4, no fallback)")
@click.option("--per-task", type=int, default=100, show_default=True,
              help="held-out examples per task for the gate (one changed answer in 100 moves a metric 1 point)")
@click.option("--quantize-lm-head/--keep-lm-head", default=None,
              help="override the recipe's default for the LM head (TensorRT recipes keep it in float)")
@click.option("--int4-block-size", type=click.Choice([str(s) for s in INT4_BLOCK_SIZES]), default=None,
              help="weights per scale for ort-cpu-int4 and w4a16 [default: 32]; larger is faster on CPU, the gate "
                   "decides if it holds")
@click.option("--overwrite", is_flag=True)
def quantize_command(artifacts: Path, recipe: str, out: Path, calib: Path | None, max_drop: float | None,
                     per_task: int, quantize_lm_head: bool, int4_block_size: str | None, overwrite: bool) -> None:
    """Quantize FP32 artifacts with a recipe; accepted only if every task metric holds (quant_report.json)."""
    from eov_edge.quantize.build import quantize_artifacts

    try:
        report = quantize_artifacts(artifacts, recipe, out, calib, max_drop, per_task, overwrite=overwrite,
                                    quantize_lm_head=quantize_lm_head, progress=lambda m: click.echo(m, err=True),
                                    int4_block_size=int(int4_block_size) if int4_block_size else None)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    size = report["size"]
    click.echo(f"wrote {out}: {size['fp32_bytes'] / 2**20:.1f} MiB -> {size['quantized_bytes'] / 2**20:.1f} MiB "
               f"({size['ratio']:.2f}x smaller); worst metric drop "
               f"{max((r['drop'] for r in report['gate']['rows']), default=0):+.2f} points "
               f"(budget {report['gate']['budget_points']:g}); report: {out / 'quant_report.json'}")


@main.command("engine")
@click.option("--artifacts", type=click.Path(path_type=Path), required=True,
              help="FP32 artifacts, or trt-int8 / trt-fp8 / w4a16 quantized ones")
@click.option("--device", type=click.Choice(["orin-nano", "orin-nx", "agx-orin", "thor", "l4", "l40s", "h100"]),
              required=True)
@click.option("--precision", type=click.Choice(["auto", "fp16", "int8", "fp8", "w4a16"]), default="auto",
              show_default=True, help="auto: what the artifacts carry (FP32 -> fp16)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="engine folder to create")
@click.option("--max-batch", type=int, default=1, show_default=True)
@click.option("--max-views", type=int, default=4, show_default=True, help="views per sample")
@click.option("--max-seq", type=int, default=None, help="longest prompt (default: the model's context)")
@click.option("--max-kv", type=int, default=None, help="KV cache slots (default: context - 1)")
@click.option("--workspace-mb", type=int, default=None, help="builder workspace (default: 1/8 of the device)")
@click.option("--trtexec-script", is_flag=True, help="also write build_engines.sh (trtexec commands) for the device")
@click.option("--overwrite", is_flag=True)
@click.option("--verbose", is_flag=True, help="TensorRT builder log")
def engine_command(artifacts: Path, device: str, precision: str, out: Path, max_batch: int, max_views: int,
                   max_seq: int | None, max_kv: int | None, workspace_mb: int | None, trtexec_script: bool,
                   overwrite: bool, verbose: bool) -> None:
    """Plan TensorRT engines for DEVICE and build them (where TensorRT is importable) or write the
    trtexec script that builds them on the device."""
    from eov_edge.export.engine import build_engine_folder

    try:
        summary = build_engine_folder(artifacts, device, precision, out, max_batch=max_batch, max_views=max_views,
                                      max_seq=max_seq, max_kv=max_kv, workspace_mb=workspace_mb,
                                      trtexec_script=trtexec_script, overwrite=overwrite, verbose=verbose)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(summary, indent=1))


@main.command("verify")
@click.option("--artifacts", type=click.Path(path_type=Path), required=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True)
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="JSON report (default: ARTIFACTS/verify_report.json)")
def verify_command(artifacts: Path, checkpoint: Path, report: Path | None) -> None:
    """Re-run the graph and whole-pipeline parity checks on existing artifacts."""
    from eov_edge.export.validate import verify

    report = report or artifacts / "verify_report.json"
    try:
        summary = verify(artifacts, checkpoint, report)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    if not summary["ok"]:
        raise click.ClickException(f"parity check failed (report: {report})\n{summary['error']}")
    click.echo(json.dumps(summary["summary"], indent=1))
    click.echo(f"report: {report}")
