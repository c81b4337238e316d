"""Task metrics (pure Python, no torch): the same numbers for PyTorch, ONNX Runtime and TensorRT.

Boxes are (x1, y1, x2, y2) in pixels, x2 >= x1, y2 >= y1.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 for disjoint or degenerate boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre_in_box(pred: Box, target: Box) -> bool:
    """Does the centre of ``pred`` fall inside ``target`` (edges included)?"""
    cx, cy = (pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2
    return target[0] <= cx <= target[2] and target[1] <= cy <= target[3]


def accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Exact-match accuracy after trimming whitespace and case."""
    if not targets:
        return 0.0
    return sum(normalize(p) == normalize(t) for p, t in zip(predictions, targets)) / len(targets)


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def multilabel_scores(predicted: Sequence[Iterable[str]], targets: Sequence[Iterable[str]]) -> dict[str, float]:
    """BigEarthNet-style sample-averaged precision, recall and F1.

    Per sample: P = |pred & true| / |pred|, R = |pred & true| / |true|, F1 their harmonic mean (0
    when both are 0); an empty prediction has P = 0. Averaged over samples.
    """
    p_sum = r_sum = f_sum = 0.0
    n = 0
    for pred, true in zip(predicted, targets):
        pred_set, true_set = {normalize(x) for x in pred}, {normalize(x) for x in true}
        hit = len(pred_set & true_set)
        precision = hit / len(pred_set) if pred_set else 0.0
        recall = hit / len(true_set) if true_set else float(not pred_set)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        p_sum, r_sum, f_sum, n = p_sum + precision, r_sum + recall, f_sum + f1, n + 1
    if n == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    return {"precision": p_sum / n, "recall": r_sum / n, "f1": f_sum / n}


def grounding_scores(predicted: Sequence[Box | None], targets: Sequence[Box]) -> dict[str, float]:
    """P@0.5 (share with IoU >= 0.5), mean IoU, centre-in-box hit rate and well-formed rate.

    A missing prediction (None: no parseable box) counts as IoU 0 and a miss.
    """
    n = len(targets)
    if n == 0:
        return {"p@0.5": 0.0, "mean_iou": 0.0, "centre_hit": 0.0, "well_formed": 0.0}
    ious = [iou(p, t) if p is not None else 0.0 for p, t in zip(predicted, targets)]
    hits = [p is not None and centre_in_box(p, t) for p, t in zip(predicted, targets)]
    return {
        "p@0.5": sum(v >= 0.5 for v in ious) / n,
        "mean_iou": sum(ious) / n,
        "centre_hit": sum(hits) / n,
        "well_formed": sum(p is not None for p in predicted) / n,
    }


def match_boxes(predicted: Sequence[Box], targets: Sequence[Box], threshold: float = 0.5) -> int:
    """True positives of a greedy one-to-one matching, highest IoU first, IoU >= threshold."""
    pairs = sorted(
        ((iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(targets)), reverse=True
    )
    used_p, used_t, tp = set(), set(), 0
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            tp += 1
    return tp


def detection_scores(
    predicted: Sequence[Sequence[tuple[str, Box]]], targets: Sequence[Sequence[tuple[str, Box]]],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Micro precision, recall, F1 over all images; a match needs the same label and IoU >= 0.5."""
    tp = n_pred = n_true = 0
    for pred, true in zip(predicted, targets):
        n_pred, n_true = n_pred + len(pred), n_true + len(true)
        for label in {lab for lab, _ in pred} | {lab for lab, _ in true}:
            tp += match_boxes([b for lab, b in pred if lab == label], [b for lab, b in true if lab == label],
                              threshold)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


_WORD = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions 1-4, geometric mean, brevity
    penalty against the closest reference length. No smoothing (0 when some order has no match)."""
    matches, totals = [0] * 4, [0] * 4
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        c = _tokens(cand)
        rs = [_tokens(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1] if rs else 0
        for n in range(1, 5):
            counts = _ngrams(c, n)
            max_ref: Counter = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)
            matches[n - 1] += sum(min(v, max_ref[g]) for g, v in counts.items())
            totals[n - 1] += max(0, len(c) - n + 1)
    if min(matches) == 0 or cand_len == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as in coco-caption): TF-IDF n-gram cosine (n=1..4) with clipped
    candidate counts and a Gaussian length penalty, x10, document frequencies from the references."""
    n_images = len(references)
    if n_images == 0:
        return 0.0
    doc_freq: list[Counter] = [Counter() for _ in range(4)]
    for refs in references:
        for n in range(1, 5):
            seen = set()
            for r in refs:
                seen |= set(_ngrams(_tokens(r), n))
            doc_freq[n - 1].update(seen)
    log_n = math.log(float(n_images))

    def vector(tokens: list[str], n: int) -> tuple[dict, float]:
        counts = _ngrams(tokens, n)
        vec = {g: tf * (log_n - math.log(max(1.0, doc_freq[n - 1][g]))) for g, tf in counts.items()}
        return vec, math.sqrt(sum(v * v for v in vec.values()))

    total = 0.0
    for cand, refs in zip(candidates, references):
        c_tokens = _tokens(cand)
        score = 0.0
        for n in range(1, 5):
            c_vec, c_norm = vector(c_tokens, n)
            for r in refs:
                r_tokens = _tokens(r)
                r_vec, r_norm = vector(r_tokens, n)
                dot = sum(min(v, r_vec.get(g, 0.0)) * r_vec.get(g, 0.0) for g, v in c_vec.items())
                if c_norm and r_norm:
                    delta = len(c_tokens) - len(r_tokens)
                    score += dot / (c_norm * r_norm) * math.exp(-(delta**2) / (2 * sigma**2)) / len(refs)
        total += score / 4 * 10.0
    return total / n_images
