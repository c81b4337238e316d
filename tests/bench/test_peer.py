"""The decoder head to head with ONNX Runtime GenAI: same weights, same tokens, a fair configuration."""

from __future__ import annotations

import json

import pytest

from eov_edge.bench.peer import (
    build_ort_genai,
    genai_available,
    peer_markdown,
    run_peer_bench,
)

pytestmark = pytest.mark.skipif(genai_available() is not None, reason=str(genai_available()))


@pytest.mark.slow
def test_ours_and_ort_genai_agree_with_pytorch_token_for_token(shipped, nano_artifacts, tmp_path):
    model, _ = shipped
    peer = run_peer_bench(model.language_model, {"fp32": nano_artifacts}, tmp_path, {"fp32": 10.0, "int4": 2.0},
                          bandwidth_gbs=10.0, batch=2, prompt_tokens=24, max_new=6, repeats=1, rounds=1,
                          progress=lambda _: None)
    rows = peer["rows"]
    assert set(rows) == {"ours fp32", "ort-genai fp32", "ort-genai int4"}
    # The shipped model, greedy, EOS suppressed: both loops give PyTorch generate()'s tokens.
    assert rows["ours fp32"]["tokens_identical_to_pytorch"] is True
    assert rows["ort-genai fp32"]["tokens_identical_to_pytorch"] is True
    assert rows["ort-genai int4"]["tokens_identical_to_pytorch"] is None  # not expected of int4
    for row in rows.values():
        assert row["decode_ms_per_token"] > 0 and row["ttft_ms"] > 0
        assert row["decode_vs_floor"] == pytest.approx(row["decode_ms_per_token"] / row["bandwidth_floor_ms"], rel=0.02)
    assert rows["ours fp32"]["decode_vs_ort_genai"] == pytest.approx(
        rows["ours fp32"]["decode_ms_per_token"] / rows["ort-genai fp32"]["decode_ms_per_token"], rel=0.01)
    # ours decodes without probabilities, as GenAI; the default scored loop is timed beside it
    assert rows["ours fp32"]["decode_ms_per_token_scored"] > 0
    assert rows["ort-genai fp32"]["decode_ms_per_token_scored"] is None
    assert "| ours fp32 |" in peer_markdown(peer)


@pytest.mark.slow
def test_genai_model_is_configured_fairly(shipped, tmp_path):
    model, _ = shipped
    folder = build_ort_genai(model.language_model, tmp_path / "og", "fp32", threads=2, eos_token_id=1)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    assert config["model"]["eos_token_id"] == [1]
    assert config["search"]["past_present_share_buffer"] is True
    assert not (tmp_path / "og.tmp").exists()  # built aside, renamed into place


@pytest.mark.slow
def test_genai_int4_uses_our_block_size(shipped, tmp_path):
    import onnx

    model, _ = shipped
    folder = build_ort_genai(model.language_model, tmp_path / "og4", "int4", threads=2, eos_token_id=1,
                             int4_block_size=64)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nodes and {a.i for n in nodes for a in n.attribute if a.name == "block_size"} == {64}
    assert {a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"} == {4}
