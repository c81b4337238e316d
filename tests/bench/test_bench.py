"""eov-bench's checks on the artifacts it is given: the benchmarked model's weights, the row's recipe."""

import json
import shutil

import pytest
from click.testing import CliRunner

from eov_edge.bench.artifacts import BenchError, check_supplied_artifacts, gate_status, stale_cache
from eov_edge.bench.cli import main, parse_recipe_artifacts
from eov_edge.model.weights import weights_sha256


@pytest.fixture(scope="module")
def nano_hash(shipped):
    model, _ = shipped
    return weights_sha256(model)


def _copy_with_manifest(source, target, edit):
    shutil.copytree(source, target)
    path = target / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return target


def test_fp32_artifacts_of_the_benchmarked_model_are_accepted_for_the_fp32_row_only(nano_artifacts, nano_hash):
    assert check_supplied_artifacts(nano_artifacts, nano_hash, None) == {}
    with pytest.raises(BenchError, match="made with no recipe .FP32., this row takes the ort-cpu-int8 recipe"):
        check_supplied_artifacts(nano_artifacts, nano_hash, "ort-cpu-int8")


def test_artifacts_of_other_weights_or_without_their_hash_are_refused(nano_artifacts, nano_hash, tmp_path):
    other = _copy_with_manifest(nano_artifacts, tmp_path / "other",
                                lambda m: m["produced_by"].update(weights_sha256="0" * 64))
    with pytest.raises(BenchError, match="exported from other weights"):
        check_supplied_artifacts(other, nano_hash, None)
    old = _copy_with_manifest(nano_artifacts, tmp_path / "old", lambda m: m["produced_by"].pop("weights_sha256"))
    with pytest.raises(BenchError, match="re-export with eov-export onnx"):
        check_supplied_artifacts(old, nano_hash, None)
    (old / "decoder.onnx").write_bytes(b"truncated")
    with pytest.raises(BenchError, match="sha256 differs from the manifest"):
        check_supplied_artifacts(old, nano_hash, None)


def test_quantized_artifacts_must_be_the_rows_recipe_and_block_size(nano_artifacts, nano_hash, tmp_path):
    gate = {"accepted": True, "budget_points": 2.0, "examples": 2300,
            "rows": [{"task": "vqa", "drop": 0.4}, {"task": "caption", "drop": 1.25}],
            "fallback": [{"graph": "decoder", "node": "node_matmul_31"}]}
    int4 = _copy_with_manifest(nano_artifacts, tmp_path / "int4", lambda m: m.update(quantization={
        "recipe": "ort-cpu-int4", "graphs": {"decoder": {"block_size": 128}}, "gate": gate}))
    with pytest.raises(BenchError, match="ort-cpu-int4, this row takes the ort-cpu-int8"):
        check_supplied_artifacts(int4, nano_hash, "ort-cpu-int8")
    with pytest.raises(BenchError, match="blocks of 128 weights, the benchmark's are 32; pass --int4-block-size 128"):
        check_supplied_artifacts(int4, nano_hash, "ort-cpu-int4", int4_block_size=32)
    summary = check_supplied_artifacts(int4, nano_hash, "ort-cpu-int4", int4_block_size=128)
    assert gate_status(summary) == ("gate accepted: worst drop 1.25 points (budget 2.0) on 2300 held-out examples, "
                                    "1 node(s) back in float")
    assert gate_status({}) == gate_status({"skipped": "not gated"}) == "not gated (speed and size only)"


def test_recipe_artifacts_option_is_parsed_and_checked(tmp_path):
    recipes = ("ort-cpu-int8", "ort-cpu-int4")
    assert parse_recipe_artifacts((f"ort-cpu-int8={tmp_path}",), recipes) == {"ort-cpu-int8": tmp_path}
    for value, message in ((str(tmp_path), "write RECIPE=DIR"), (f"trt-int8={tmp_path}", "not among the timed"),
                           (f"ort-cpu-int4={tmp_path / 'missing'}", "is not a folder")):
        result = CliRunner().invoke(main, ["--out", str(tmp_path / "b"), "--no-peer", "--recipe-artifacts", value])
        assert result.exit_code == 2 and message in result.output, result.output
    twice = CliRunner().invoke(main, ["--out", str(tmp_path / "b"), "--no-peer", "--recipe-artifacts",
                                      f"ort-cpu-int8={tmp_path}", "--recipe-artifacts", f"ort-cpu-int8={tmp_path}"])
    assert twice.exit_code == 2 and "given twice" in twice.output


def test_cli_refuses_artifacts_of_another_model_before_timing_anything(nano_artifacts, tmp_path):
    # nano's artifacts given to the small preset's benchmark: a clear error, no traceback, no report
    result = CliRunner().invoke(main, ["--preset", "small", "--out", str(tmp_path / "b"), "--no-peer",
                                       "--recipes", "", "--artifacts", str(nano_artifacts)])
    assert result.exit_code == 1 and "exported from other weights" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "b" / "bench.json").exists()
    # a draft named but not timed is a usage error, before anything runs
    result = CliRunner().invoke(main, ["--preset", "small", "--out", str(tmp_path / "c"), "--no-peer",
                                       "--recipes", "ort-cpu-int4", "--draft", "ort-cpu-int8"])
    assert result.exit_code == 2 and "--draft ort-cpu-int8: not among the timed recipes (ort-cpu-int4)" in result.output
    assert not (tmp_path / "c").exists()


def test_a_cached_folder_is_timed_again_only_while_current(nano_artifacts, nano_hash, tmp_path):
    # exported in this test session, by this code: current
    assert stale_cache(nano_artifacts, nano_hash) is None
    assert stale_cache(tmp_path / "none", nano_hash) == "not there"
    older = _copy_with_manifest(nano_artifacts, tmp_path / "older",
                                lambda m: m["produced_by"].update(git_commit="0123abc"))
    assert stale_cache(older, nano_hash).startswith("made by eov-edge") and "at 0123abc" in stale_cache(older, nano_hash)
    assert stale_cache(nano_artifacts, "f" * 64) == "of other weights"
    unhashed = _copy_with_manifest(nano_artifacts, tmp_path / "unhashed", lambda m: m["produced_by"].pop("weights_sha256"))
    assert stale_cache(unhashed, nano_hash) == "without the weights' hash"
    (unhashed / "projector.onnx").write_bytes(b"cut")
    assert "sha256 differs" in stale_cache(unhashed, nano_hash)


def test_first_token_flops_are_the_views_and_the_prompt_with_last_position_logits_only(shipped):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from eov_edge.bench.measure import bench_samples, first_token_gflop

    model, processor = shipped
    samples = bench_samples(model.config.image_size, 2)
    counted = first_token_gflop(model, processor, samples)
    batch = processor(samples, max_new_tokens=1)
    rows, length = batch["input_ids"].shape
    with torch.no_grad(), FlopCounterMode(display=False) as every_logit:
        model(**batch, logits_to_keep=0)
    lm_head = model.language_model.get_output_embeddings().weight  # (V, D)
    # every position's logits cost exactly 2 * V * D more per row and position
    assert every_logit.get_total_flops() / 1e9 - counted == pytest.approx(
        2 * rows * (length - 1) * lm_head.numel() / 1e9, rel=1e-6)
    # at least every decoder layer's weights once per prompt token (attention and the views on top)
    layers = model.language_model.model.layers
    per_token = sum(p.numel() for name, p in layers.named_parameters() if name.endswith("proj.weight"))
    assert counted > 2 * rows * length * per_token / 1e9


def test_compute_peak_is_a_plausible_gemm_rate():
    from eov_edge.bench.measure import compute_peak_gflops

    rate = compute_peak_gflops(size=256, repeats=3)
    assert 0.5 < rate < 1e5  # GFLOP/s of one fp32 GEMM on this machine's cores, not a time or a count


def _row(e2e, ttft, new_tokens, bandwidth_floor_ms, first_floor=None):
    return {"e2e_ms": {"median": e2e, "min": e2e, "max": e2e}, "ttft_ms": {"median": ttft}, "encoder_ms": {"median": 1.0},
            "new_tokens": new_tokens, "bandwidth_floor_ms": bandwidth_floor_ms, "decode_ms_per_token": 1.0,
            "speedup_e2e": 1.0, "peak_rss_mb": 1.0, "size_mb": 1.0, "tokens_identical_to_pytorch": True,
            "first_token_floor_ms": first_floor}


def test_fp32_floors_bound_the_speedup_and_are_reported():
    from eov_edge.bench.report import fp32_floors, markdown

    rows = {"pytorch eager": _row(900.0, 200.0, 33, 8.0, 100.0), "runtime fp32": _row(360.0, 130.0, 32, 7.5, 100.0),
            "runtime ort-cpu-int8": _row(180.0, 110.0, 32, 2.0)}
    floors = fp32_floors(rows, first_token_gflop=16.0, gemm_gflops=160.0)
    # first token 16 GFLOP at 160 GFLOP/s = 100 ms; the FP32 runtime's 31 decode steps at its 7.5 ms
    assert floors["fp32_e2e_floor_ms"] == pytest.approx(100.0 + 31 * 7.5)
    assert floors["fp32_speedup_at_floors"] == pytest.approx(900.0 / 332.5, abs=0.01)
    report = {"preset": "small", "batch": 1, "max_new_tokens": 32, "repeats": 5, "rounds": 1, "rows": rows,
              "machine": {"cpus": 2, "platform": "p", "read_bandwidth_gbs": 30.0}, "floors": floors, "note": "n"}
    text = markdown(report)
    assert "| runtime fp32 | 360.0 [360.0-360.0] | 1.00 | 130.0 (100.0) |" in text
    assert "| runtime ort-cpu-int8 | 180.0 [180.0-180.0] | 1.00 | 110.0 |" in text  # no FP32 floor for INT8
    assert "would take 332.5 ms end to end: 2.71x this run's PyTorch" in text


def test_the_speculative_row_states_its_acceptance_and_whether_it_kept_the_fp32_answer():
    from eov_edge.bench.report import markdown
    from eov_edge.bench.rows import Row

    name = Row.speculative("ort-cpu-int8").value
    assert name == "runtime fp32 + int8 draft"
    rows = {"pytorch eager": _row(900.0, 200.0, 33, 8.0), "runtime fp32": _row(360.0, 130.0, 32, 7.5),
            name: {**_row(250.0, 130.0, 32, 7.5), "tokens_identical_to_fp32": True,
                   "speculative": {"draft_tokens": 4, "rounds": 7, "drafted": 24, "accepted": 24, "acceptance": 1.0}}}
    report = {"preset": "small", "batch": 1, "max_new_tokens": 32, "repeats": 5, "rounds": 1, "rows": rows,
              "machine": {"cpus": 2, "platform": "p", "read_bandwidth_gbs": 30.0}, "note": "n"}
    text = markdown(report)
    assert f"| {name} | 250.0" in text
    assert "tokens = the FP32 row's: yes" in text and "24 kept (acceptance 1.0): 32 tokens in 8 FP32 decoder calls" in text
    rows[name]["tokens_identical_to_fp32"] = False
    assert "tokens = the FP32 row's: NO" in markdown(report)


def test_a_row_whose_prompt_session_was_measured_says_which_one_ran():
    from eov_edge.bench.report import markdown
    from eov_edge.bench.rows import merge_rounds
    from eov_edge.core import manifest as mf
    from eov_edge.runtime.pipeline import PREFILL

    def timed(ms):
        return {"median": ms, "min": ms, "max": ms}

    def run(chosen=None):
        row = {**_row(180.0, 110.0, 32, 2.0), "encoder_ms": timed(1.0), "projector_ms": timed(1.0),
               "ttft_ms": timed(110.0)}
        if chosen:
            row["prompt_session"] = {"chosen": chosen, "prompt_tokens": 128, "ms": {PREFILL: 70.1, mf.DECODER: 61.2}}
        return row

    row = merge_rounds([run(mf.DECODER), run(PREFILL), run(mf.DECODER)])
    assert row["prompt_session_chosen"] == {mf.DECODER: 2, PREFILL: 1}
    rows = {"pytorch eager": _row(900.0, 200.0, 33, 8.0), "runtime ort-cpu-int4": row}
    report = {"preset": "small", "batch": 1, "max_new_tokens": 32, "repeats": 5, "rounds": 3, "rows": rows,
              "machine": {"cpus": 2, "platform": "p", "read_bandwidth_gbs": 30.0}, "note": "n"}
    text = markdown(report)
    assert "runtime ort-cpu-int4: prompts ran in the session measured faster" in text
    assert "decode session (int8-compute kernel) 2x, prefill session (fp32-compute kernel) 1x" in text
    assert "128-token prompt: prefill session (fp32-compute kernel) 70.1 ms, decode session (int8-compute kernel) 61.2 ms" in text
    assert "prompts ran" not in markdown({**report, "rows": {**rows, "runtime ort-cpu-int4": merge_rounds([run()])}})


@pytest.mark.slow
def test_bench_runtime_with_a_draft_times_the_fp32_answer(nano_fused_artifacts, tmp_path):
    from eov_edge.bench.measure import bench_runtime
    from eov_edge.quantize.build import write_ungated

    draft = write_ungated(nano_fused_artifacts, "ort-cpu-int8", tmp_path / "int8")
    plain = bench_runtime(nano_fused_artifacts, 1, 8, 1)
    speculative = bench_runtime(nano_fused_artifacts, 1, 8, 1, draft=draft)
    assert speculative["tokens"] == plain["tokens"] and "speculative" not in plain
    assert speculative["speculative"]["rounds"] >= 1 and speculative["speculative"]["draft_tokens"] == 4
    assert speculative["size_mb"] > plain["size_mb"] + 1  # the draft's decoder and table come along


def test_peer_rounds_pair_each_row_with_its_genai_row_and_alternate_who_runs_first():
    from eov_edge.bench.peer import peer_round_order

    names = ["ours fp32", "ours fp32-portable", "ours int8", "ours int4", "ort-genai fp32", "ort-genai int4"]
    even, odd = peer_round_order(names, 0), peer_round_order(names, 1)
    assert even == ["ours fp32", "ort-genai fp32", "ours int4", "ort-genai int4", "ours fp32-portable", "ours int8"]
    assert odd == ["ort-genai fp32", "ours fp32", "ort-genai int4", "ours int4", "ours fp32-portable", "ours int8"]
    assert sorted(peer_round_order(names, 2)) == sorted(names)
    # a GenAI row with none of ours (the int4 row not asked for) still runs
    assert peer_round_order(["ours fp32", "ort-genai fp32", "ort-genai int4"], 1) == \
        ["ort-genai fp32", "ours fp32", "ort-genai int4"]
