"""``eov-export``: one command group over the build side (export and quantize commands); ``eov-eval``."""

from __future__ import annotations

from pathlib import Path

import click

from eov_edge.export.cli import engine_command, gguf_command, onnx_command, verify_command
from eov_edge.quantize.cli import quantize_command


@click.group()
def export_main() -> None:
    """Export Earth-OneVision checkpoints to ONNX, quantize them, and plan or build TensorRT engines."""


for _command in (onnx_command, quantize_command, engine_command, gguf_command, verify_command):
    export_main.add_command(_command)


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="a PyTorch checkpoint folder (eov-train, or the shipped eov_edge/assets/eov-nano)")
@click.option("--artifacts", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="an artifacts folder (eov-export onnx or quantize): scored through the device runtime")
@click.option("--data", "data", type=click.Path(path_type=Path, exists=True), default=None,
              help="held-out examples: a JSONL file or a folder with one (docs/evaluation.md), or the project's "
                   "data folder (its val split) [default: $EOV_DATA_DIR where present, else the shipped pack]")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="report JSON (a .md is written beside)")
@click.option("--per-task", type=click.IntRange(min=1), default=None,
              help="at most this many examples per task [default: all of a JSONL file; 256 of a data folder "
                   "(margin intervals about +-0.05 on accuracy)]")
@click.option("--task", "tasks", multiple=True, help="only these task kinds (repeatable; default: every task the data has)")
@click.option("--slis-grammar/--no-slis-grammar", default=True, show_default=True,
              help="grammar-constrained decoding of spatial answers (checkpoints; the runtime always constrains "
                   "them); --no-slis-grammar measures how well-formed the model's own answers are")
def eval_main(checkpoint: Path | None, artifacts: Path | None, data: Path | None, out: Path, per_task: int | None,
              tasks: tuple[str, ...], slis_grammar: bool) -> None:
    """Score a checkpoint or artifacts on held-out examples, per task, beside image-blind baselines."""
    from eov_edge.core.errors import EOVError
    from eov_edge.core.tasks import resolve_task
    from eov_edge.evaluation.scoring import markdown

    if (checkpoint is None) == (artifacts is None):
        raise click.UsageError("give --checkpoint (PyTorch) or --artifacts (the runtime), one of them")
    try:
        tasks = tuple(dict.fromkeys(resolve_task(t).name for t in tasks))
    except EOVError as err:
        raise click.UsageError(f"unknown task kind: {err}") from None
    try:
        report = run_evaluation(checkpoint, artifacts, data, out, per_task, tasks, slis_grammar)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    click.echo(markdown(report))
    click.echo(f"report: {out} ({report['examples_from']})")


def run_evaluation(checkpoint: Path | None, artifacts: Path | None, data: Path | None, out: Path,
                   per_task: int | None, tasks: tuple[str, ...], slis_grammar: bool = True) -> dict:
    """eov-eval: read and check the examples first (before any model loads), answer, score, write."""
    import time

    from eov_edge.core import manifest as mf
    from eov_edge.core.paths import data_dir, heldout_pack, write_json_atomic
    from eov_edge.core.provenance import git_commit
    from eov_edge.core.tasks import TASKS
    from eov_edge.evaluation.heldout import load_heldout
    from eov_edge.evaluation.scoring import add_margins, markdown, score_predictions

    if artifacts is not None:
        manifest = mf.load_manifest(artifacts)
        image_size = manifest.image_size
        patch = int(manifest.model_config.get("vision_config", {}).get("patch_size", 16))
    else:
        from eov_edge.model.config import EarthOneVisionConfig

        config = EarthOneVisionConfig.from_pretrained(checkpoint)
        image_size, patch = config.image_size, config.vision_config.patch_size
    if data is None:
        data = data_dir() if (data_dir() / "README.md").is_file() else heldout_pack()
    if Path(data).is_dir() and (Path(data) / "hit_uav").is_dir():  # the project's data folder
        from eov_edge.training.evaluate import EVAL_SEED, data_folder_set

        examples = data_folder_set(Path(data), image_size, patch, per_task or 256, EVAL_SEED, tasks or tuple(TASKS))
    else:
        examples = load_heldout(data, image_size, per_task=per_task, tasks=tasks or None)
    started = time.time()
    if artifacts is not None:
        from eov_edge.quantize.gate import answer_examples

        predictions = answer_examples(artifacts, examples.examples)
        report = score_predictions(predictions, examples.examples, examples.baseline_examples, image_size)
        add_margins(report, predictions, examples.examples, examples.baseline_examples, image_size)
        report.update({"artifacts": str(artifacts), "seconds": round(time.time() - started, 1),
                       "examples_from": examples.name, **examples.provenance, "git_commit": git_commit()})
        write_json_atomic(out, report)
        Path(out).with_suffix(".md").write_text(markdown(report))
        return report
    from eov_edge.training.evaluate import run_eval

    return run_eval(checkpoint, out, examples, slis_grammar=slis_grammar, progress=False)

