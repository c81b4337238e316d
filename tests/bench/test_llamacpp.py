"""The decoder head to head with llama.cpp: the same weights through GGUF, a VLM prompt fed to both
as embeddings, tokens checked against PyTorch, ratios paired within rounds."""

from __future__ import annotations

import statistics

import pytest

from eov_edge.bench.llamacpp import llamacpp_markdown, llamacpp_round_order, run_llamacpp_bench


def test_each_group_runs_side_by_side_in_alternating_order():
    groups = [["llama.cpp f32", "ours fp32 onnxruntime", "ours fp32 llamacpp"], ["llama.cpp q4_k_m"]]
    assert llamacpp_round_order(groups, 0) == ["llama.cpp f32", "ours fp32 onnxruntime", "ours fp32 llamacpp",
                                               "llama.cpp q4_k_m"]
    assert llamacpp_round_order(groups, 1) == ["ours fp32 llamacpp", "ours fp32 onnxruntime", "llama.cpp f32",
                                               "llama.cpp q4_k_m"]


@pytest.mark.slow
def test_ours_and_llama_cpp_agree_with_pytorch_on_a_vlm_prompt(shipped, nano_fused_artifacts, tmp_path, llama_cpp):
    import shutil

    model, processor = shipped
    folder = tmp_path / "fp32"
    shutil.copytree(nano_fused_artifacts, folder)  # the GGUFs are added to the artifacts
    section = run_llamacpp_bench(model, processor, {"fp32": folder}, tmp_path, {"fp32": 10.0},
                                 bandwidth_gbs=10.0, prompt_tokens=80, max_new=6, repeats=1, rounds=2,
                                 thread_counts=(2, 1), progress=lambda _: None)
    assert set(section["threads"]) == {"2", "1"}
    for threads, rows in section["threads"].items():
        ours_rows = ["ours fp32 onnxruntime", "ours fp32 llamacpp-decode", "ours fp32 llamacpp"]
        assert set(rows) == {*ours_rows, "llama.cpp f32", "llama.cpp q8_0", "llama.cpp q4_0", "llama.cpp q4_k_m"}
        # the shipped model, greedy, EOS suppressed: our loops (ONNX Runtime, llama.cpp after a handed-over
        # prompt, llama.cpp alone) and llama.cpp's F32 give PyTorch's tokens
        assert all(rows[name]["tokens_identical_to_pytorch"] is True for name in ours_rows + ["llama.cpp f32"])
        assert rows["llama.cpp q4_0"]["tokens_identical_to_pytorch"] is None  # not expected of 4-bit
        assert all(rows[name]["paired_with"] == "llama.cpp f32" for name in ours_rows)
        ours, theirs = rows["ours fp32 onnxruntime"], rows["llama.cpp f32"]
        assert ours["decode_vs_llamacpp"] == pytest.approx(statistics.median(
            a / b for a, b in zip(ours["decode_ms_per_token_rounds"], theirs["decode_ms_per_token_rounds"])), abs=1e-3)
        assert len(ours["decode_ms_per_token_rounds"]) == 2
        assert ours["rss_vs_llamacpp"] == pytest.approx(ours["peak_rss_mb"] / theirs["peak_rss_mb"], abs=1e-3)
        # llama.cpp's floor counts its own bytes per token: Q4_0 reads well under a third of F32's
        assert rows["llama.cpp q4_0"]["weights_mb_per_token"] < rows["llama.cpp f32"]["weights_mb_per_token"] / 3
        for row in rows.values():
            assert row["decode_ms_per_token"] > 0 and row["ttft_ms"] > 0 and row["peak_rss_mb"] > 0
    text = llamacpp_markdown(section)
    assert "### 1 thread(s)" in text and "| ours fp32 llamacpp-decode |" in text and "| llama.cpp q4_k_m |" in text
    # every GGUF is the artifacts' own (eov-export gguf), the file our llamacpp rows decode with
    from eov_edge.core import manifest as mf

    assert set(mf.load_manifest(folder).gguf) == {"f32", "q8_0", "q4_0", "q4_k_m"}
