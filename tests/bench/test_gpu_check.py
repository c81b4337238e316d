"""benchmarks/gpu_check.sh, the one command for the device: valid shell, the fast TensorRT checks before
the slow gate, one JSON of every step (passed, failed or not run, with its reason), and on a machine
without a GPU, such as this one, a non-zero exit with nothing reported as passed."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["preflight", "gpu_tests", "device", "export", "engines_fp16", "run_fp16", "latency", "quantize_int8",
         "engines_int8"]


def test_the_script_parses_and_orders_fast_checks_first():
    assert subprocess.run(["sh", "-n", str(SCRIPT)]).returncode == 0
    text = SCRIPT.read_text()
    steps = re.findall(r"^\s*(?:if )?step (\w+)", text, re.MULTILINE)
    assert steps.index("preflight") < steps.index("gpu_tests") < steps.index("quantize_int8")
    assert "pip uninstall" not in text.replace("# ", "")  # never removes a working ONNX Runtime
    assert "|| DEVICE=\"\"" not in text  # a failed device probe is a recorded failure, not a silent skip


def test_the_report_is_one_json_of_every_step_with_its_reason(tmp_path):
    """The script's record/step/not_run functions and report lines, run with stand-in commands."""
    text = SCRIPT.read_text()
    functions = text[text.index("json_string() {"):text.index("needs() {")]
    report = text[text.index('{ echo "{\\"device'):]
    snippet = (f'OUT="{tmp_path}"\nPYTHON="{sys.executable}"\nRESULTS="$OUT/parts"\n: > "$RESULTS"\n'
               f'DEVICE=orin-nano\n{functions}\nstep first true\nstep second sh -c "echo why it broke; exit 3"\n'
               f'not_run third "needs \\"second\\""\n{report}')
    result = subprocess.run(["sh", "-c", snippet], capture_output=True, text=True)
    assert result.returncode == 1  # a failed and a not-run step: the check did not pass
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "orin-nano"
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("first", "passed"), ("second", "failed"), ("third", "not run")]
    assert report["steps"][1]["reason"] == "why it broke (log: second.log)"
    assert report["steps"][2]["reason"] == 'needs "second"'


@pytest.mark.slow
def test_without_a_gpu_the_check_fails_and_passes_nothing(tmp_path):
    """Run here, where there is no GPU, TensorRT or cuda-python: exit non-zero, every step listed as
    failed or not run, each with its reason, none passed."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHON=sys.executable)
    result = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0, result.stdout[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [s["name"] for s in report["steps"]] == STEPS
    assert all(s["status"] in ("failed", "not run") and s["reason"] for s in report["steps"]), report
    assert "no GPU" in report["steps"][1]["reason"] and "pip install" in report["steps"][1]["reason"]
    assert "did NOT pass" in result.stderr


@pytest.mark.slow
def test_under_the_check_a_gpu_test_that_would_skip_fails(nano_artifacts):
    """EOV_GPU_CHECK=1 (what the script sets): the CUDA provider test fails naming what is missing,
    where a plain run skips it."""
    test = "tests/runtime/test_cuda.py"
    base = dict(os.environ, EOV_NANO_ARTIFACTS=str(nano_artifacts))
    plain = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test], cwd=ROOT,
                           env={k: v for k, v in base.items() if k != "EOV_GPU_CHECK"}, capture_output=True, text=True)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout[-2000:]
    checked = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                             env=dict(base, EOV_GPU_CHECK="1"), capture_output=True, text=True)
    assert checked.returncode == 1 and "1 failed" in checked.stdout, checked.stdout[-2000:]
    assert "the device check needs what this machine lacks" in checked.stdout
