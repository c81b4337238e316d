"""The `make demo` chain (export -> quantize -> verify -> run -> benchmark) on tiny settings."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_chain_runs_end_to_end(tmp_path, capsys, monkeypatch):
    """On the shipped pack alone, as on a fresh clone: no shared data folder is read."""
    from eov_edge.bench.demo import main

    monkeypatch.setenv("EOV_DATA_DIR", str(tmp_path / "no-shared-data"))
    result = main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "=== [5/5]" in printed and "| backend |" in printed and "accuracy, ort-cpu-int8" in printed
    assert "held-out examples from" in printed and "heldout.jsonl" in printed and " malformed" in printed
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


def test_the_demo_prints_no_progress_bar_and_no_warning(tmp_path):
    """What a user sees in a terminal, run as `make demo` runs it: stdout and stderr of a fresh
    process, without the shared data folder."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, EOV_DATA_DIR=str(tmp_path / "no-shared-data"), PYTHONWARNINGS="default")
    result = subprocess.run([sys.executable, "-m", "eov_edge.bench.demo", "--quick", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = result.stdout + result.stderr
    assert "=== [5/5]" in result.stdout
    for noise in ("Warning", "Loading weights", "it/s]", "Traceback"):
        assert noise not in seen, (noise, seen[-3000:])
