"""``eov-train``: the reference model trained with the PCMA stages (``eov-eval`` is in eov_edge.cli).

    eov-train --preset nano --out runs/nano
    eov-train --preset small --init-vision siglip/ --init-decoder qwen2.5-0.5b/ \\
        --train-data train.jsonl --val-data val.jsonl --out runs/small
    torchrun --nproc-per-node 8 -m eov_edge.training --preset eov-2b --fsdp --bf16 \\
        --activation-checkpointing --init-vision ... --init-decoder ... --train-data ... --out runs/2b
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from eov_edge.core.paths import data_dir
from eov_edge.model.config import PRESETS


def _data_option(f):
    return click.option("--data", "data_root", type=click.Path(path_type=Path), default=None,
                        help="real-data folder (default: $EOV_DATA_DIR or ../shared/data)")(f)


@click.command()
@click.option("--preset", default="nano", show_default=True, type=click.Choice(PRESETS),
              help="model shape (the parts --init-vision / --init-decoder give come from their configs)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run folder (resumes if present)")
@click.option("--seed", default=0, show_default=True)
@click.option("--scale", default=1.0, show_default=True, help="multiply every PCMA stage's step count")
@click.option("--batch-size", type=int, default=None, help="every stage's global batch (examples per step)")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="a training config as JSON (the form a run writes to OUT/last/train_config.json), "
                   "stages included; the options given here override its fields")
@click.option("--vision-stem", type=click.Choice(["patch", "conv"]), default=None,
              help="patch tokens from one strided convolution (ViT) or a convolutional stem "
                   "[default: the preset's: conv for nano, patch for the others]")
@click.option("--init-vision", type=click.Path(exists=True, file_okay=False), default=None,
              help="a SigLIP vision tower saved by transformers' save_pretrained (safetensors)")
@click.option("--init-decoder", type=click.Path(exists=True, file_okay=False), default=None,
              help="a Qwen2 / Qwen2.5 causal LM with its tokenizer, saved by save_pretrained")
@click.option("--train-data", type=click.Path(exists=True), default=None,
              help="training examples as JSONL in the held-out format (docs/evaluation.md), streamed")
@click.option("--val-data", type=click.Path(exists=True), default=None,
              help="validation examples (JSONL) for the per-task validation loss")
@click.option("--fsdp", is_flag=True, help="shard parameters, gradients and optimizer state (FSDP2) over the "
                                           "torchrun processes, instead of replicating them (DDP)")
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="micro-batches per step: each process's share of the batch split, gradients summed")
@click.option("--bf16", is_flag=True, help="bfloat16 compute (float32 master weights and gradient reduction)")
@click.option("--activation-checkpointing", is_flag=True, help="recompute each layer in backward: less memory")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[default: cuda where present]")
@click.option("--threads", type=int, default=None, help="CPU threads per process [default: 2]")
@_data_option
def train_main(preset: str, out: Path, seed: int, scale: float, batch_size: int | None, config_file: Path | None,
               vision_stem: str | None, init_vision: str | None, init_decoder: str | None, train_data: str | None,
               val_data: str | None, fsdp: bool, grad_accum: int, bf16: bool, activation_checkpointing: bool,
               device: str | None, threads: int | None, data_root: Path | None) -> None:
    """Train the reference model with the PCMA stages; writes OUT/final.

    Under torchrun (torchrun --nproc-per-node N -m eov_edge.training ...) every process runs this and
    the stages' batches are shared out (data parallel; --fsdp to shard). Only the first process logs
    and writes the checkpoints.
    """
    from dataclasses import replace

    from eov_edge.core.errors import EOVError
    from eov_edge.training.distributed import Workers
    from eov_edge.training.train import TrainConfig, train

    options = dict(vision_stem=vision_stem, init_vision=init_vision, init_decoder=init_decoder,
                   train_data=train_data, val_data=val_data, fsdp=fsdp, grad_accum=grad_accum, bf16=bf16,
                   activation_checkpointing=activation_checkpointing, device=device)
    try:
        if config_file is not None:
            config = TrainConfig.from_dict(json.loads(config_file.read_text()))
            given = {k: v for k, v in options.items() if v not in (None, False) and not (k == "grad_accum" and v == 1)}
            config = replace(config, **given)
        else:
            config = TrainConfig.pcma(preset, scale=scale, seed=seed, **options)
        if threads is not None:
            config = replace(config, threads=threads)
        if batch_size is not None:
            config = replace(config, stages=[replace(s, batch_size=batch_size) for s in config.stages])
        root = data_root or data_dir()
        if config.train_data is None and not root.is_dir():
            raise click.UsageError(f"no training data: real-data folder {root} not found; pass --train-data FILE.jsonl, "
                                   "--data or set EOV_DATA_DIR")
        workers = Workers.from_environment(config.device)
        try:
            final = train(config, out, root, workers=workers)
        finally:
            workers.close()
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    if workers.is_main:
        click.echo(f"checkpoint: {final}")
