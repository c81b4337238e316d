"""The export commands of ``eov-export`` (onnx, engine, verify): a thin click layer over
:mod:`eov_edge.export`. ``eov_edge.cli`` joins them with ``quantize`` into one command group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from eov_edge.core.errors import EOVError


@click.command("onnx")
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
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.export.onnx_export import export_onnx, manifest_summary

    if checkpoint is None and preset is None:
        checkpoint = NANO_CHECKPOINT
    try:
        manifest = export_onnx(out, checkpoint=checkpoint, preset=preset, opset=opset, overwrite=overwrite,
                               validate=not no_validate, decoder=decoder)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {out}")
    click.echo(manifest_summary(manifest))


@click.command("gguf")
@click.option("--artifacts", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="artifacts folder (eov-export onnx) to add the GGUF to")
@click.option("--type", "gguf_type", type=click.Choice(["f32", "q8_0", "q4_0", "q4_k_m"]), default="f32",
              show_default=True, help="f32: the weights as they are; the others by llama.cpp's own quantizer")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="the checkpoint the artifacts were exported from (default: the shipped nano checkpoint)")
@click.option("--preset", type=click.Choice(["nano", "small", "eov-2b"]), default=None,
              help="the preset (random weights, seed 0) the artifacts were exported from")
def gguf_command(artifacts: Path, gguf_type: str, checkpoint: Path | None, preset: str | None) -> None:
    """Write the decoder as decoder-TYPE.gguf for llama.cpp (eov-run --decoder-backend llamacpp)."""
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.export.gguf_export import add_gguf_to_artifacts

    if checkpoint is None and preset is None:
        checkpoint = NANO_CHECKPOINT
    try:
        entry = add_gguf_to_artifacts(artifacts, gguf_type, checkpoint=checkpoint, preset=preset)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {artifacts / entry['file']} ({entry['bytes_per_token'] / 2**20:.1f} MiB read per decode step)")


@click.command("engine")
@click.option("--artifacts", type=click.Path(path_type=Path), required=True,
              help="FP32 artifacts, or trt-int8 / trt-fp8 / w4a16 quantized ones")
@click.option("--device", type=click.Choice(["orin-nano", "orin-nx", "agx-orin", "thor", "l4", "l40s", "h100"]),
              required=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8", "fp8", "w4a16"]), default="auto",
              show_default=True, help="auto: what the artifacts carry (FP32 -> fp16)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="engine folder to create")
@click.option("--max-batch", type=int, default=1, show_default=True)
@click.option("--max-views", type=int, default=4, show_default=True, help="views per sample")
@click.option("--max-seq", type=int, default=None, help="longest prompt (default: the model's context)")
@click.option("--max-kv", type=int, default=None, help="KV cache slots (default: context - 1)")
@click.option("--workspace-mb", type=int, default=None, help="builder workspace (default: 1/8 of the device)")
@click.option("--trtexec-script", is_flag=True, help="also write build_engines.sh (trtexec commands) for the device")
@click.option("--tensorrt", "tensorrt_version", default=None, metavar="VERSION",
              help="plan for this TensorRT (e.g. 11.4 from pip) instead of the device's JetPack one; where TensorRT "
                   "is importable, the importable one decides")
@click.option("--overwrite", is_flag=True)
@click.option("--verbose", is_flag=True, help="TensorRT builder log")
def engine_command(artifacts: Path, device: str, precision: str, out: Path, max_batch: int, max_views: int,
                   max_seq: int | None, max_kv: int | None, workspace_mb: int | None, trtexec_script: bool,
                   tensorrt_version: str | None, overwrite: bool, verbose: bool) -> None:
    """Plan TensorRT engines for DEVICE and build them (where TensorRT is importable) or write the
    trtexec script that builds them on the device."""
    from eov_edge.export.engine import build_engine_folder

    try:
        summary = build_engine_folder(artifacts, device, precision, out, max_batch=max_batch, max_views=max_views,
                                      max_seq=max_seq, max_kv=max_kv, workspace_mb=workspace_mb,
                                      trtexec_script=trtexec_script, overwrite=overwrite, verbose=verbose,
                                      tensorrt=tensorrt_version)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(summary, indent=1))


@click.command("verify")
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
