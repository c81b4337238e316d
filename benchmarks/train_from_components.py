"""The chain from a user's own files: pretrained components, a JSONL training file, export, evaluation.

    python benchmarks/train_from_components.py --out /tmp/components-run \\
        --report benchmarks/results/train_from_components_small.json

1. Saves a SigLIP vision tower and a Qwen2 decoder with a Qwen2-shaped tokenizer (random weights
   from configs, as eov_edge.bench.components builds them; no hub) at the ``small`` preset's widths.
2. Writes a training JSONL in the held-out format from the shared data folder's *train* split
   (``--per-task`` examples of each task, crops as files, as calib_data/build_heldout.py writes the
   pack from the val split), or takes ``--train-data``.
3. ``eov-train --preset small --init-vision --init-decoder --train-data`` (every PCMA stage,
   ``--scale`` of its steps), then ``eov-export onnx`` and ``eov-eval --artifacts`` on the shipped
   pack; each a command in its own process, as a user runs them.

Reports the commands, their wall times, the loss at the start and end of each stage and the
per-task scores beside the image-blind baselines. Random components and a few hundred steps: this
shows the chain runs from the user's files and learns, not what a pretrained pair reaches.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_train_jsonl(out: Path, per_task: int, seed: int) -> Path:
    """``per_task`` examples of each task from the train split, written as the pack is written (crops at
    their own size; references in their pixels)."""
    from eov_edge.core.paths import data_dir
    from eov_edge.core.tasks import TASKS
    from eov_edge.training.data.examples import ExampleFactory

    spec = importlib.util.spec_from_file_location("build_heldout", ROOT / "calib_data" / "build_heldout.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    # the canvas size the pack's writer maps references from (files keep the crops' own sizes)
    factory = ExampleFactory(data_dir(), "train", pack.IMAGE_SIZE, pack.PATCH_SIZE, keep_source_pixels=True)
    rng = random.Random(seed)
    records, written = [], {}
    for task in TASKS:
        for k in range(per_task):
            example = factory.sample(task, rng)
            crop = example.views[0].extra["source_pixels"].shape[-1]
            stem = f"{task}_{k:04d}"
            views = [pack.write_view(v, out, out / "views" / task, f"{stem}_v{i}", written)
                     for i, v in enumerate(example.views)]
            records.append({"id": stem, "task": task, "views": views, "prompt": example.instruction,
                            **pack.reference(example, crop), "source": example.source.split("shared/data/")[-1]})
    file = out / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records))
    return file


def run(command: list[str], log: Path) -> float:
    started = time.time()
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}); see {log}")
    return round(time.time() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--train-data", type=Path, default=None, help="a JSONL training file (default: written "
                                                                       "from the data folder's train split)")
    parser.add_argument("--per-task", type=int, default=64)
    parser.add_argument("--scale", type=float, default=0.06, help="of every PCMA stage's steps (0.06: 294 steps)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-per-task", type=int, default=32)
    args = parser.parse_args()

    from eov_edge.bench.components import save_qwen2, save_siglip
    from eov_edge.core.paths import heldout_pack
    from eov_edge.core.provenance import git_commit
    from eov_edge.model import EarthOneVisionConfig

    args.out.mkdir(parents=True, exist_ok=True)
    small = EarthOneVisionConfig.from_preset("small")
    vision, text = small.vision_config, small.text_config
    components = args.out / "components"
    started = time.time()
    if not (components / "qwen2" / "tokenizer.json").is_file():
        save_siglip(components / "siglip", image_size=vision.image_size, patch_size=vision.patch_size,
                    depth=vision.num_hidden_layers, width=vision.hidden_size, heads=vision.num_attention_heads,
                    mlp=vision.intermediate_size)
        save_qwen2(components / "qwen2", tie=False, rows=4160, tokens=4096, width=text.hidden_size,
                   depth=text.num_hidden_layers, heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
                   mlp=text.intermediate_size)
    components_s = round(time.time() - started, 1)
    train_data = args.train_data
    data_s = 0.0
    if train_data is None:
        started = time.time()
        train_data = args.out / "train" / "train.jsonl"
        if not train_data.is_file():
            write_train_jsonl(train_data.parent, args.per_task, seed=4000)
        data_s = round(time.time() - started, 1)
    python = sys.executable
    scripts = Path(python).parent  # the console scripts of this environment, as a user runs them
    commands = {
        "train": [python, "-m", "eov_edge.training", "--preset", "small", "--init-vision", str(components / "siglip"),
                  "--init-decoder", str(components / "qwen2"), "--train-data", str(train_data), "--val-data",
                  str(heldout_pack()), "--scale", str(args.scale), "--batch-size", str(args.batch_size),
                  "--out", str(args.out / "run")],
        "export": [str(scripts / "eov-export"), "onnx", "--checkpoint", str(args.out / "run" / "final"),
                   "--out", str(args.out / "artifacts"), "--overwrite"],
        "eval": [str(scripts / "eov-eval"), "--artifacts",
                 str(args.out / "artifacts"), "--data", str(heldout_pack()), "--per-task", str(args.eval_per_task),
                 "--out", str(args.out / "eval.json")],
    }
    seconds = {name: run(command, args.out / f"{name}.log") for name, command in commands.items()}
    log = json.loads((args.out / "run" / "final" / "train_log.json").read_text())
    stages: dict[str, dict] = {}
    for entry in log:
        if "lm" in entry:
            stage = stages.setdefault(entry["stage"], {"first_lm": entry["lm"], "steps": 0})
            stage["last_lm"], stage["steps"] = entry["lm"], entry["step"] + 1
        if "val_loss" in entry:
            stages.setdefault(entry["stage"], {})["val_loss"] = entry["val_loss"]
    report = json.loads((args.out / "eval.json").read_text())
    scores = {task: {"metric": r["headline"], "model": round(r.get(r["headline"]), 3),
                     "baseline": round(r.get(f"baseline_{r['headline']}"), 3), "n": r["n"]}
              for task, r in report["tasks"].items()}
    train_lines = sum(1 for _ in open(train_data))
    result = {"git_commit": git_commit(), "commands": {k: " ".join(v) for k, v in commands.items()},
              "seconds": {"components": components_s, "train_jsonl": data_s, **seconds},
              "train_examples": train_lines, "stages": stages, "eval_per_task": args.eval_per_task, "scores": scores}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=1) + "\n")
    rows = [f"| {s} | {v.get('steps', '')} | {v.get('first_lm', float('nan')):.3f} | {v.get('last_lm', float('nan')):.3f} |"
            for s, v in stages.items()]
    score_rows = [f"| {t} | {v['metric']} | {v['model']} | {v['baseline']} | {v['n']} |" for t, v in scores.items()]
    (args.report.with_suffix(".md")).write_text(
        f"# The chain from components and a JSONL file (`small`)\n\ncommit {result['git_commit']}; {train_lines} "
        f"training examples; seconds {result['seconds']}\n\n| stage | steps | first lm | last lm |\n|---|---:|---:|---:|\n"
        + "\n".join(rows) + "\n\n| task | metric | model | image-blind baseline | n |\n|---|---|---:|---:|---:|\n"
        + "\n".join(score_rows) + "\n")
    print(json.dumps(result["seconds"]), "->", args.report)


if __name__ == "__main__":
    main()
