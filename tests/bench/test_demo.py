"""The `make demo` chain (export -> quantize -> verify -> run -> benchmark) on tiny settings."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_chain_runs_end_to_end(tmp_path, shared_data, capsys):
    from eov_edge.bench.demo import main

    result = main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "=== [5/5]" in printed and "| backend |" in printed and "accuracy, ort-cpu-int8" in printed
    assert result["quantization"]["accepted"]
    assert (tmp_path / "artifacts" / "nano-int8" / "quant_report.json").is_file()
    scene = json.loads((tmp_path / "scene.geojson").read_text())
    assert scene["type"] == "FeatureCollection" and scene["properties"]["tiles"] == result["scene"]["tiles"]
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert set(bench["rows"]) == {"pytorch eager", "runtime fp32", "runtime ort-cpu-int8"}
    assert bench["rows"]["runtime fp32"]["tokens_identical_to_pytorch"]
    # the demo times its own gate-accepted INT8 artifacts, and the report says they are
    assert bench["quantized_rows_accuracy"]["runtime ort-cpu-int8"].startswith("gate accepted: worst drop")
    # two interleaved rounds (--quick): x PyTorch is the median of the within-round ratios
    fp32, base = bench["rows"]["runtime fp32"], bench["rows"]["pytorch eager"]
    assert bench["rounds"] == 2 and len(fp32["e2e_ms_rounds"]) == len(base["e2e_ms_rounds"]) == 2
    paired = sorted(b / r for b, r in zip(base["e2e_ms_rounds"], fp32["e2e_ms_rounds"]))
    assert fp32["speedup_e2e"] == pytest.approx((paired[0] + paired[1]) / 2, rel=1e-3)
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 1000
