"""``eov-bench --questions N``: N different questions about one image, as a ground station asks them.

End to end (one single-view calib_data image; the N questions are the default questions of the
tasks one view allows, in task order): PyTorch eager (N ``generate()`` calls), and the runtime
answering them one by one (``Pipeline.answer``: every question encodes the view and prefills its
whole prompt), together without prefix reuse (``answer_questions(share_prefix=False)``: the view
encoded once, one decoder batch), together with the prefix reuse (the image block prefilled once
and copied under each question), and a later call on the same image (the prefix cache warm: nothing
encoded or prefilled but the questions' own tokens); the CPU recipes together (the prefix reused
where the recipe's answers allow it: not dynamic INT8, whose activation scales span a call). Every
row answers exactly ``max_new`` tokens per question (EOS suppressed until then), for short answers
(class, yes/no, count) and long ones. Tokens are compared with PyTorch's (FP32 rows) and, for every
runtime row, with the same artifacts answering each question alone.

Decoder head to head, the same decoder work on both sides (text only: ONNX Runtime GenAI takes
token ids): N prompts of ``prompt_tokens`` token ids of which the last ``suffix_tokens`` differ per
question. ORT GenAI answers them as N sequential requests and as one batch of N (both timed; the
faster is the comparison); our decoder as one batch without and with the shared prefix prefilled once.

Each row runs in its own process (:mod:`eov_edge.bench.worker`; what it times: ``time_questions`` and
``time_questions_decoder`` in :mod:`eov_edge.bench.measure`), rows interleaved over rounds
(every other round reversed); ratios are paired within a round, then the median over rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from eov_edge.bench.peer import build_ort_genai
from eov_edge.bench.rows import RECIPES, Row
from eov_edge.bench.worker import run_worker

SHORT, LONG = 8, 32  # new tokens: a class, yes/no or count; a caption or a few boxes
PROMPT_TOKENS, SUFFIX_TOKENS = 200, 20  # the decoder head to head's prompts


@dataclass(frozen=True)
class QuestionRow:
    label: str
    kind: str  # pytorch | runtime | ort-genai
    where: str
    mode: str  # pytorch: one generate() per question; runtime: alone | together | shared | cached


def instructions(n: int) -> list[str]:
    """N different questions about one view: the default questions of the tasks one view allows."""
    from eov_edge.core.tasks import DEFAULT_QUESTIONS, TASKS

    asked = [DEFAULT_QUESTIONS[t] for t, spec in TASKS.items() if spec.min_views <= 1]
    extra = ["Is there a road? Answer yes or no.", "How many buildings are there?", "What is the dominant land cover?",
             "Are there ships in the image?"]
    pool = asked + extra
    if n > len(pool):
        pool += [f"Question {i}: what else is in the image?" for i in range(len(pool), n)]
    return pool[:n]


# -- driver side ---------------------------------------------------------------------------------
def run_questions_bench(language_model, where_pytorch: str, folders: dict[Row, Path], out: Path, n: int,
                        repeats: int, rounds: int, progress=print, peer: bool = True,
                        lengths: tuple[int, ...] = (SHORT, LONG)) -> dict:
    """The ``questions`` section of bench.json. ``folders``: the rows' artifacts (Row.FP32 and the
    recipes' rows present are timed)."""
    questions = instructions(n)
    rows = [QuestionRow("pytorch eager", "pytorch", where_pytorch, "generate")]
    fp32 = str(folders[Row.FP32])
    rows += [QuestionRow(f"runtime fp32 {label}", "runtime", fp32, mode)
             for label, mode in (("one by one", "alone"), ("together", "together"), ("prefix reuse", "shared"),
                                 ("prefix cached", "cached"))]
    # answer_questions as it stands: the prefix reused where the recipe's answers allow (not dynamic INT8)
    rows += [QuestionRow(f"runtime {recipe} together", "runtime", str(folders[Row.of_recipe(recipe)]), "shared")
             for recipe in RECIPES if Row.of_recipe(recipe) in folders]
    section: dict = {"questions": questions, "n": n, "repeats": repeats, "rounds": rounds, "end_to_end": {}}
    for max_new in lengths:
        timed: dict[str, list[dict]] = {r.label: [] for r in rows}
        for round_index in range(rounds):
            for row in (rows if round_index % 2 == 0 else rows[::-1]):
                progress(f"questions x{n}, {max_new} new tokens, round {round_index + 1}/{rounds}: {row.label}")
                timed[row.label].append(run_worker("questions", kind=row.kind, where=row.where, questions=questions,
                                                   max_new=max_new, repeats=repeats, mode=row.mode))
        section["end_to_end"][str(max_new)] = _end_to_end_rows(timed)
    if peer:
        section["decoder_head_to_head"] = _decoder_head_to_head(language_model, fp32, out, n, repeats,
                                                                max(rounds, 3), progress, lengths)
    return section


def _median_ms(runs: list[dict], key: str) -> list[float]:
    return [statistics.median(r[key]) for r in runs]


def _end_to_end_rows(timed: dict[str, list[dict]]) -> dict:
    base_rounds = _median_ms(timed["pytorch eager"], "e2e_ms")
    one_by_one = _median_ms(timed["runtime fp32 one by one"], "e2e_ms")
    reference = timed["pytorch eager"][0]["tokens"]
    out = {}
    for label, runs in timed.items():
        rounds = _median_ms(runs, "e2e_ms")
        row = {"e2e_ms": round(statistics.median(rounds), 1), "e2e_ms_rounds": [round(v, 1) for v in rounds],
               "x_pytorch": round(statistics.median(b / r for b, r in zip(base_rounds, rounds)), 2),
               "x_one_by_one": round(statistics.median(b / r for b, r in zip(one_by_one, rounds)), 2),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
               "tokens_identical_to_pytorch": (runs[0]["tokens"] == reference) if "fp32" in label or label ==
               "pytorch eager" else None,
               "identical_to_alone": (all(r["identical_to_alone"] for r in runs)
                                      if "identical_to_alone" in runs[0] else None)}
        if "prefix_cache_mb" in runs[0]:
            row["prefix_cache_mb"] = runs[0]["prefix_cache_mb"]
            row["prefix_cache_bound_mb"] = runs[0]["prefix_cache_bound_mb"]
        out[label] = row
    return out


def _decoder_head_to_head(language_model, fp32: str, out: Path, n: int, repeats: int, rounds: int, progress,
                          lengths) -> dict:
    import os

    import numpy as np

    threads = os.cpu_count() or 2
    eos = int(language_model.config.eos_token_id)
    vocab = int(language_model.config.vocab_size)
    rng = np.random.default_rng(0)
    shared = rng.integers(8, vocab, size=PROMPT_TOKENS - SUFFIX_TOKENS)
    ids = [shared.tolist() + rng.integers(8, vocab, size=SUFFIX_TOKENS).tolist() for _ in range(n)]
    progress("building the ONNX Runtime GenAI fp32 model")
    genai = build_ort_genai(language_model, Path(out) / "artifacts" / "ort-genai-fp32", "fp32", threads, eos)
    rows = [("ort-genai fp32 sequential", "ort-genai", str(genai), "sequential"),
            ("ort-genai fp32 batch", "ort-genai", str(genai), "batch"),
            ("ours fp32 batch", "ours", fp32, "batch"),
            ("ours fp32 prefix reuse", "ours", fp32, "shared")]
    section = {"prompt_tokens": PROMPT_TOKENS, "suffix_tokens": SUFFIX_TOKENS, "n": n, "rounds": rounds,
               "threads": threads, "lengths": {}}
    for max_new in lengths:
        timed: dict[str, list[dict]] = {label: [] for label, *_ in rows}
        for round_index in range(rounds):
            for label, kind, where, mode in (rows if round_index % 2 == 0 else rows[::-1]):
                progress(f"decoder questions x{n}, {max_new} new tokens, round {round_index + 1}/{rounds}: {label}")
                timed[label].append(run_worker("questions_decoder", kind=kind, where=where, ids=ids,
                                               shared=PROMPT_TOKENS - SUFFIX_TOKENS, max_new=max_new,
                                               repeats=repeats, mode=mode))
        sequential = _median_ms(timed["ort-genai fp32 sequential"], "total_ms")
        batched = _median_ms(timed["ort-genai fp32 batch"], "total_ms")
        faster = [min(a, b) for a, b in zip(sequential, batched)]  # GenAI's better configuration, per round
        reference = timed["ort-genai fp32 batch"][0]["tokens"]
        table = {}
        for label, runs in timed.items():
            rounds_ms = _median_ms(runs, "total_ms")
            table[label] = {"total_ms": round(statistics.median(rounds_ms), 1),
                            "total_ms_rounds": [round(v, 1) for v in rounds_ms],
                            "x_ort_genai_faster": round(statistics.median(f / r for f, r in zip(faster, rounds_ms)), 2),
                            "tokens_identical_to_ort_genai": runs[0]["tokens"] == reference}
        section["lengths"][str(max_new)] = {
            "ort_genai_faster": "sequential" if statistics.median(sequential) < statistics.median(batched) else "batch",
            "rows": table}
    return section


def questions_markdown(section: dict) -> str:
    lines = [f"## {section['n']} questions about one image", "",
             f"Questions: {'; '.join(section['questions'])}. Each row in its own process, {section['rounds']} "
             f"interleaved rounds of {section['repeats']} runs; x is paired within a round (median over rounds). "
             "Every question gets exactly the stated number of new tokens.", ""]
    for max_new, rows in section["end_to_end"].items():
        lines += [f"### End to end, {max_new} new tokens per question", "",
                  "| row | all questions ms | x PyTorch | x one by one | peak RSS MiB | prefix cache MiB (bound) "
                  "| tokens = PyTorch | = asked alone |", "|---|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            cache = f"{r['prefix_cache_mb']:.2f} ({r['prefix_cache_bound_mb']:.0f})" if "prefix_cache_mb" in r else "-"
            same = {True: "yes", False: "NO", None: "-"}[r["tokens_identical_to_pytorch"]]
            lines.append(f"| {label} | {r['e2e_ms']:.1f} | {r['x_pytorch']:.2f} | {r['x_one_by_one']:.2f} | "
                         f"{r['peak_rss_mb']:.0f} | {cache} | {same} | "
                         f"{ {True: 'yes', False: 'NO', None: '-'}[r['identical_to_alone']]} |")
        lines.append("")
    if head := section.get("decoder_head_to_head"):
        for max_new, result in head["lengths"].items():
            lines += [f"### Decoder head to head with ONNX Runtime GenAI, {max_new} new tokens: {head['n']} prompts of "
                      f"{head['prompt_tokens']} tokens, the last {head['suffix_tokens']} different per question", "",
                      f"GenAI's faster configuration here: {result['ort_genai_faster']}.", "",
                      "| decoder | all questions ms | x GenAI's faster | tokens = GenAI batch |", "|---|---|---|---|"]
            for label, r in result["rows"].items():
                lines.append(f"| {label} | {r['total_ms']:.1f} | {r['x_ort_genai_faster']:.2f} | "
                             f"{'yes' if r['tokens_identical_to_ort_genai'] else 'no'} |")
            lines.append("")
    return "\n".join(lines)


def questions_chart(section: dict, path: Path) -> None:
    """x PyTorch of every end-to-end row, short and long answers side by side."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = list(section["end_to_end"])
    labels = list(section["end_to_end"][lengths[0]])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.2))
    height = 0.8 / len(lengths)
    for i, max_new in enumerate(lengths):
        values = [section["end_to_end"][max_new][label]["x_pytorch"] for label in labels]
        ys = [y + i * height for y in range(len(labels))]
        ax.barh(ys, values, height=height, label=f"{max_new} new tokens")
        for y, v in zip(ys, values):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=7)
    ax.set_yticks([y + height * (len(lengths) - 1) / 2 for y in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("x PyTorch eager (paired), higher is faster")
    ax.set_title(f"{section['n']} questions about one image")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
