"""``eov-export``: one command group over the build side (export and quantize commands)."""

from __future__ import annotations

import click

from eov_edge.export.cli import engine_command, onnx_command, verify_command
from eov_edge.quantize.cli import quantize_command


@click.group()
def export_main() -> None:
    """Export Earth-OneVision checkpoints to ONNX, quantize them, and plan or build TensorRT engines."""


for _command in (onnx_command, quantize_command, engine_command, verify_command):
    export_main.add_command(_command)
