"""eov-bench --questions: the questions asked, the paired ratios and token checks of its tables, and
one real measurement of each kind (the runtime's modes answer alike, GenAI and ours agree)."""

from __future__ import annotations

import pytest

from eov_edge.bench.measure import time_questions, time_questions_decoder
from eov_edge.bench.questions import _end_to_end_rows, instructions, questions_markdown


def test_n_different_questions():
    for n in (2, 4, 7, 12):
        asked = instructions(n)
        assert len(asked) == n == len(set(asked))


def run(ms, tokens, **extra):
    return {"e2e_ms": ms, "tokens": tokens, "peak_rss_mb": 100.0, **extra}


def test_ratios_are_paired_within_rounds_and_tokens_checked():
    timed = {  # two rounds; the machine ran twice as fast in the second
        "pytorch eager": [run([400.0], [[1, 2]]), run([200.0], [[1, 2]])],
        "runtime fp32 one by one": [run([100.0], [[1, 2]], identical_to_alone=True, prefix_cache_mb=0.0,
                                        prefix_cache_bound_mb=256.0)] * 2,
        "runtime fp32 prefix reuse": [run([40.0], [[1, 2]], identical_to_alone=True, prefix_cache_mb=1.0,
                                          prefix_cache_bound_mb=256.0), run([20.0], [[1, 3]], identical_to_alone=False,
                                                                            prefix_cache_mb=1.0,
                                                                            prefix_cache_bound_mb=256.0)],
    }
    rows = _end_to_end_rows(timed)
    assert rows["runtime fp32 prefix reuse"]["x_pytorch"] == 10.0  # 400/40 and 200/20, not 300/30 by chance
    assert rows["runtime fp32 prefix reuse"]["x_one_by_one"] == pytest.approx(3.75)  # median of 2.5 and 5
    assert rows["runtime fp32 prefix reuse"]["identical_to_alone"] is False  # any round differing counts
    assert rows["pytorch eager"]["identical_to_alone"] is None
    text = questions_markdown({"n": 2, "questions": ["a?", "b?"], "rounds": 2, "repeats": 1,
                               "end_to_end": {"8": rows}})
    assert "| runtime fp32 prefix reuse | 30.0 | 10.00 | 3.75 | 100 | 1.00 (256) | yes | NO |" in text


@pytest.mark.slow
def test_every_runtime_mode_answers_as_alone_and_ours_matches_genai(nano_fused_artifacts, shipped, tmp_path):
    from eov_edge.bench.peer import build_ort_genai, genai_available

    asked = instructions(3)
    results = {mode: time_questions("runtime", str(nano_fused_artifacts), asked, 6, 1, mode)
               for mode in ("alone", "together", "shared", "cached")}
    assert all(r["identical_to_alone"] for r in results.values())
    assert len({str(r["tokens"]) for r in results.values()}) == 1
    assert results["cached"]["prefix_cache_mb"] > 0
    if genai_available():
        pytest.skip(genai_available())
    model, _ = shipped
    genai = build_ort_genai(model.language_model, tmp_path / "genai", "fp32", 2, int(model.language_model.config.eos_token_id))
    ids = [[5 + i for i in range(30)] + [40 + q] * 5 for q in range(3)]
    ours = time_questions_decoder("ours", str(nano_fused_artifacts), ids, 30, 6, 1, "shared")
    theirs = time_questions_decoder("ort-genai", str(genai), ids, 30, 6, 1, "sequential")
    assert ours["tokens"] == theirs["tokens"]
