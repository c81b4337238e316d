"""Where a checkpoint's VQA answers fail, and whether its image tokens know the answer anyway.

    python benchmarks/vqa_diagnosis.py --checkpoint eov_edge/assets/eov-nano --report benchmarks/results/vqa_diagnosis_nano.json

1. VQA accuracy on ``--per-task`` held-out examples (eov-eval's seed and draws), split by source
   (HIT-UAV thermal, HRSID SAR), question kind (count, presence) and class, beside each group's
   majority answer on the same examples.
2. A linear read-out of the same checkpoint's image tokens: logistic regression on the mean- and
   max-pooled projector output of HIT-UAV crops drawn as VQA draws them (training split to fit,
   validation split to score), for "is there a car" and "is there a person". If it reads presence
   far better than the model answers it, the vision side knows and the decoder does not read it.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

import numpy as np

CLASSES = ("car", "person")


def answer_breakdown(model, processor, data_root: Path, per_task: int, seed: int) -> dict:
    from eov_edge.training.data.examples import ExampleFactory
    from eov_edge.training.evaluate import build_examples, predict

    size, patch = model.config.image_size, model.config.vision_config.patch_size
    examples = build_examples(ExampleFactory(data_root, "val", size, patch), per_task, seed, ("vqa",))
    groups = [("hrsid" if "hrsid" in e.source else "hit_uav", e.target["kind"], e.target["class"], e.answer)
              for e in examples]
    predictions = predict(model, processor, examples, drop_views=True, progress=False)
    hits: dict[str, list[int]] = collections.defaultdict(list)
    answers: dict[str, list[str]] = collections.defaultdict(list)
    for (source, kind, cls, truth), predicted in zip(groups, predictions):
        for key in (f"{source} {kind} {cls}", f"all {kind}", "all"):
            hits[key].append(int(predicted.strip() == truth))
            answers[key].append(truth)
    return {key: {"n": len(h), "accuracy": round(sum(h) / len(h), 3),
                  "majority_answer_accuracy": round(max(collections.Counter(answers[key]).values()) / len(h), 3)}
            for key, h in sorted(hits.items())}


def pooled_tokens(model, data_root: Path, split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 2 * D) mean- and max-pooled image tokens of HIT-UAV VQA-style crops; (count, 2) presence."""
    import torch

    from eov_edge.core.bands import MODALITY_INDEX
    from eov_edge.training.data.examples import ExampleFactory

    factory = ExampleFactory(data_root, split, model.config.image_size, model.config.vision_config.patch_size)
    rng = random.Random(seed)
    features, present = [], []
    while len(features) < count:
        scene, view, boxes = factory._object_view(rng, around=0.6)  # the draw _vqa makes
        if scene.band_set == "sar_amplitude8":
            continue
        pixels = torch.from_numpy(view.canvas[None]).float()  # (1, 16, H, W)
        with torch.no_grad():
            tokens = model.encode_images(pixels, torch.tensor([MODALITY_INDEX[view.modality]]))[0].numpy()  # (N', D)
        features.append(np.concatenate([tokens.mean(0), tokens.max(0)]))
        present.append([any(label == cls for label, _ in boxes) for cls in CLASSES])
    return np.array(features), np.array(present, float)


def logistic_fit(x: np.ndarray, y: np.ndarray, steps: int = 400, lr: float = 0.1, l2: float = 1e-2):
    """Weights and bias of an L2-regularised logistic regression, by full-batch gradient descent."""
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        g = p - y
        w -= lr * (x.T @ g / len(g) + l2 * w)
        b -= lr * g.mean()
    return w, b


def linear_readout(model, data_root: Path, train_count: int, val_count: int) -> dict:
    x_train, y_train = pooled_tokens(model, data_root, "train", train_count, seed=1)
    x_val, y_val = pooled_tokens(model, data_root, "val", val_count, seed=2)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    out = {}
    for j, cls in enumerate(CLASSES):
        w, b = logistic_fit(x_train, y_train[:, j])
        accuracy = float((((x_val @ w + b) > 0) == (y_val[:, j] > 0.5)).mean())
        share = float(y_val[:, j].mean())
        out[cls] = {"presence_accuracy": round(accuracy, 3), "majority_accuracy": round(max(share, 1 - share), 3),
                    "train": train_count, "val": val_count}
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    from eov_edge.core.paths import data_dir
    from eov_edge.core.provenance import git_commit
    from eov_edge.model.processor import load_checkpoint
    from eov_edge.training.evaluate import EVAL_SEED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--per-task", type=int, default=1024, help="held-out VQA examples answered")
    parser.add_argument("--probe-train", type=int, default=1500)
    parser.add_argument("--probe-val", type=int, default=500)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data_root = args.data or data_dir()
    model, processor = load_checkpoint(args.checkpoint)
    report = {"checkpoint": str(args.checkpoint), "git_commit": git_commit(), "per_task": args.per_task,
              "answers": answer_breakdown(model, processor, data_root, args.per_task, EVAL_SEED),
              "linear_readout_of_image_tokens": linear_readout(model, data_root, args.probe_train, args.probe_val)}
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.report)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
