"""The `make demo` chain (export -> quantize -> verify -> run -> benchmark) on tiny settings."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_chain_runs_end_to_end(tmp_path, shared_data, capsys):
    from eov_edge.demo import main

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
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 1000
