"""benchmarks/gpu_check.sh, the one command for the device: valid shell, the fast TensorRT checks
before the slow gate, and one JSON of what passed (its assembly run here on recorded steps)."""

import json
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def test_the_script_parses_and_orders_fast_checks_first():
    assert subprocess.run(["sh", "-n", str(SCRIPT)]).returncode == 0
    steps = re.findall(r"^\s*step (\w+)", SCRIPT.read_text(), re.MULTILINE)
    assert len(steps) == len(set(steps))
    assert steps.index("onnxruntime_gpu") < steps.index("gpu_tests") < steps.index("quantize_int8")


def test_the_report_is_one_json_of_every_step(tmp_path):
    """The script's step() and report lines, run with stand-in commands (true / false)."""
    text = SCRIPT.read_text()
    step = text[text.index("step() {"):text.index("cuda_provider() {")]
    report = text[text.index('{ echo "{\\"device'):text.index('rm -f "$RESULTS"')]
    snippet = (f'OUT="{tmp_path}"\nRESULTS="$OUT/parts"\n: > "$RESULTS"\nDEVICE=orin-nano\n{step}\n'
               f'step first true\nstep second false\nstep third true\n{report}')
    subprocess.run(["sh", "-c", snippet], check=True, capture_output=True)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "orin-nano"
    assert [(s["step"], s["status"]) for s in report["steps"]] == [
        ("first", "passed"), ("second", "failed"), ("third", "passed")]
