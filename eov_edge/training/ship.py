"""Package a training run as the shipped checkpoint, with a model card that says how it was made.

    python -m eov_edge.training.ship --run runs/nano-v6 --out eov_edge/assets/eov-nano --per-task 256

Stores the weights as fp16 safetensors (the card says so; they load as fp32), evaluates the stored
weights on the validation split, and writes README.md (model card), eval.json and train_log.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from eov_edge.core.paths import NANO_CHECKPOINT, data_dir, write_json_atomic
from eov_edge.core.provenance import cpu_model, git_commit


def data_fingerprint(root: Path) -> dict[str, str]:
    """sha256 over (relative path, file sha256) of every file each training source reads."""
    groups = {
        "hit_uav": ["hit_uav/annotations/*.json", "hit_uav/train/*.jpg", "hit_uav/val/*.jpg"],
        "hrsid_mini": ["hrsid_mini/images/*.jpg", "hrsid_mini/masks/*.png"],
        "major_tom_s2l2a": ["rico_hdl/Major-TOM-Core/S2L2A/*/*/*/B*.tif"],
        "ssl4eo": ["rico_hdl/SSL4EO-S12/s1/*/*/*.tif", "rico_hdl/SSL4EO-S12/s2a/*/*/*.tif"],
        "bigearthnet_tiny_s2": ["bigearthnet_tiny/s2-tiny/*/*.tif"],
    }
    out = {}
    for name, patterns in groups.items():
        digest = hashlib.sha256()
        files = sorted({p for pattern in patterns for p in root.glob(pattern)})
        for path in files:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        out[name] = f"{len(files)} files, sha256 {digest.hexdigest()}"
    return out


def ship(run: Path, out: Path, per_task: int = 256, commit: str | None = None, history: str = "") -> dict:
    """Evaluate ``run``'s final checkpoint and write it, fp16, with its model card to ``out``.
    ``history``: how the run was made, where more than the one command (a resumption, say)."""
    import torch
    import transformers

    from eov_edge.evaluation.scoring import markdown
    from eov_edge.model.processor import load_checkpoint, save_checkpoint
    from eov_edge.training.evaluate import run_eval
    from eov_edge.training.train import TrainConfig

    model, processor = load_checkpoint(run / "final")
    model = model.to(torch.float16)
    staging = Path(tempfile.mkdtemp(prefix=".ship-", dir=out.parent))
    try:
        save_checkpoint(model, processor, staging / "ckpt")
        report = run_eval(staging / "ckpt", staging / "eval.json", data_dir(), per_task=per_task)
        # run_eval names the folder it read: here the staging copy, which becomes ``out``
        report.update({"checkpoint": str(out), "run": str(run)})
        write_json_atomic(staging / "eval.json", report)
        shutil.copy(run / "final" / "train_log.json", staging / "ckpt" / "train_log.json")
        shutil.copy(run / "last" / "train_config.json", staging / "ckpt" / "train_config.json")
        shutil.copy(staging / "eval.json", staging / "ckpt" / "eval.json")
        log = json.loads((run / "final" / "train_log.json").read_text())
        config = json.loads((run / "last" / "train_config.json").read_text())
        card = MODEL_CARD.format(
            preset=model.config.preset,
            parameters=sum(p.numel() for p in model.parameters()),
            wall_minutes=max((e.get("elapsed_s", 0.0) for e in log), default=0.0) / 60,
            stages="\n".join(f"| {s['name']} | {s['steps']} | {s['batch_size']} | {s['lr']} | "
                             f"{', '.join(s['task_weights'])} | {', '.join(s['trainable'])} |"
                             for s in config["stages"]),
            seed=config["seed"],
            train_options=f" --vision-stem {config['vision_stem']}" if config.get("vision_stem") else "",
            run_name=run.name,
            scale=round(sum(st["steps"] for st in config["stages"])
                        / sum(st.steps for st in TrainConfig.pcma(config["preset"]).stages), 3),
            fingerprint="\n".join(f"- {k}: {v}" for k, v in data_fingerprint(data_dir()).items()),
            table=markdown(report),
            verdict=verdict(report),
            per_task=per_task,
            decoding="SLIS grammar-constrained" if report.get("slis_grammar", True) else "unconstrained",
            commit=commit or config.get("git_commit") or git_commit(),
            history=f"\n{history.strip()}\n" if history.strip() else "",
            versions=f"torch {torch.__version__}, transformers {transformers.__version__}, "
                     f"Python {platform.python_version()}, {os.cpu_count()} CPU cores ({cpu_model()}, "
                     f"torch CPU capability {torch.backends.cpu.get_cpu_capability()})",
        )
        (staging / "ckpt" / "README.md").write_text(card)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging / "ckpt", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


MODEL_CARD = """# eov-nano: the shipped Earth-OneVision reference checkpoint

Preset `{preset}`, {parameters:,} parameters, stored as fp16 safetensors (loads as fp32).
Trained from scratch on 2 CPU cores in {wall_minutes:.0f} minutes with:

```bash
eov-train --preset nano --out runs/{run_name} --seed {seed} --scale {scale}{train_options}
python -m eov_edge.training.ship --run runs/{run_name} --out eov_edge/assets/eov-nano --per-task {per_task}
```

Training code: git commit {commit}. Software: {versions}.
{history}
## PCMA stages

| stage | steps | batch | lr | tasks | trainable |
|---|---|---|---|---|---|
{stages}

Training-only parts, not in this checkpoint and not exported (`eov_edge/training/train.py`, `docs/data.md`):
dense heads on the encoder's patches and on the projector's output tokens (object centre and cover,
land-cover fractions), a pointer head and attention supervision (which image token the first
coordinates of a box are about; which image tokens hold the class a counting or presence question
asks about), for cross-modal pairs a match head on the optical image tokens with attention
supervision towards the SAR token of the same cell and a SAR/optical contrastive alignment of the
image tokens, Gaussian-smoothed location targets, and sine-cosine starting
points for the ViT positions, the image-token positions and the location tokens. The whole training
configuration (every stage's options and the commit) is in `train_config.json` beside this card.

## Data

Real imagery from the shared data folder; splits and label generation in `docs/data.md`
(classification, multi-label, change, video and cross-modal labels are programmatic, on real
imagery). Fingerprints of the files read:

{fingerprint}

## Validation metrics (held-out split, {per_task} examples per task, seed 1000)

Baselines ignore the image: majority training answer, mean training box, most common caption.
Greedy answers, {decoding} (`eov_edge/core/slis_grammar.py`, as the runtime decodes by default).

{verdict}

{table}
"""

def verdict(report: dict) -> str:
    """Which tasks beat their baseline on the headline metric beyond the luck of the draw (the 95%
    bootstrap interval of the margin above 0), and which do not (said plainly)."""
    from eov_edge.core.tasks import HEADLINE_METRICS

    above, below = [], []
    for task, metric in HEADLINE_METRICS.items():
        scores = report["tasks"].get(task)
        if scores is None:
            continue
        model, base = scores[metric], scores[f"baseline_{metric}"]
        low, high = scores["margin_ci95"]
        text = (f"{task} ({metric} {model:.3f} vs {base:.3f}, margin {model - base:+.3f}, 95% interval "
                f"[{low:+.3f}, {high:+.3f}], {scores['distinct_answers']} distinct answers)")
        (above if low > 0 else below).append(text)
    return ("Clearly beats the baseline: " + ("; ".join(above) or "none") + ".\n\n"
            "Not clearly above the baseline: " + ("; ".join(below) or "none") + ".")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=NANO_CHECKPOINT)
    parser.add_argument("--per-task", type=int, default=256)
    parser.add_argument("--commit", default=None, help="git commit that trained the run (default: recorded)")
    parser.add_argument("--history", default="", help="how the run was made, where more than the one command")
    args = parser.parse_args(argv)
    ship(args.run, args.out, args.per_task, args.commit, args.history)
    print(f"shipped {args.out}")


if __name__ == "__main__":
    main()
