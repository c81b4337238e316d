"""Command-line entry points of the reference model: ``eov-train`` and ``eov-eval``."""

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


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="report JSON (a .md is written beside)")
@click.option("--per-task", default=256, show_default=True,
              help="validation examples per task kind (256: margin intervals about +-0.05 on accuracy)")
@click.option("--task", "tasks", multiple=True, help="only these task kinds (repeatable; default: all nine)")
@click.option("--slis-grammar/--no-slis-grammar", default=True, show_default=True,
              help="grammar-constrained decoding of spatial answers, as the runtime does by default; "
                   "--no-slis-grammar measures how well-formed the model's own answers are")
@_data_option
def eval_main(checkpoint: Path, out: Path, per_task: int, tasks: tuple[str, ...], slis_grammar: bool,
              data_root: Path | None) -> None:
    """Evaluate every task kind on held-out real data, beside image-blind baselines."""
    from eov_edge.training.evaluate import TASKS, markdown, run_eval

    root = data_root or data_dir()
    if not root.is_dir():
        raise click.UsageError(f"real-data folder {root} not found; pass --data or set EOV_DATA_DIR")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise click.UsageError(f"unknown task kind(s) {unknown}; choose from {', '.join(TASKS)}")
    report = run_eval(checkpoint, out, root, per_task=per_task, tasks=tasks or tuple(TASKS), slis_grammar=slis_grammar)
    click.echo(markdown(report))
