"""``eov-train``: the reference model trained on the project's data folder (``eov-eval`` is in eov_edge.cli)."""

from __future__ import annotations

from pathlib import Path

import click

from eov_edge.core.paths import data_dir


def _data_option(f):
    return click.option("--data", "data_root", type=click.Path(path_type=Path), default=None,
                        help="real-data folder (default: $EOV_DATA_DIR or ../shared/data)")(f)


@click.command()
@click.option("--preset", default="nano", show_default=True, type=click.Choice(["nano", "small"]))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run folder (resumes if present)")
@click.option("--seed", default=0, show_default=True)
@click.option("--scale", default=1.0, show_default=True, help="multiply every PCMA stage's step count")
@click.option("--vision-stem", type=click.Choice(["patch", "conv"]), default=None,
              help="patch tokens from one strided convolution (ViT) or a convolutional stem "
                   "[default: the preset's: conv for nano, patch for small]")
@_data_option
def train_main(preset: str, out: Path, seed: int, scale: float, vision_stem: str | None, data_root: Path | None) -> None:
    """Train the reference model with the PCMA stages on real data; writes OUT/final."""
    from eov_edge.training.train import TrainConfig, train

    root = data_root or data_dir()
    if not root.is_dir():
        raise click.UsageError(f"real-data folder {root} not found; pass --data or set EOV_DATA_DIR")
    from eov_edge.core.errors import EOVError

    try:
        final = train(TrainConfig.pcma(preset, scale=scale, seed=seed, vision_stem=vision_stem), out, root)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"checkpoint: {final}")
