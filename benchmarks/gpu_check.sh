#!/bin/sh
# The one command to run on a Jetson or a ground-station GPU, from the repository, in a venv with the
# project and the check's extra installed (docs/devices.md):
#   Jetson, JetPack 6.1/6.2:  python3 -m venv --system-site-packages .venv   (JetPack's TensorRT 10.3)
#                             pip install -e '.[device-check,jetpack6]'
#   Jetson Thor, JetPack 7:   the same venv, pip install -e '.[device-check,jetpack7]'
#   x86, CUDA 12 driver:      pip install -e '.[export,device-check,trt-cu12]'
#   x86, driver R580+:        pip install -e '.[export,device-check,trt-cu13]'
#
#     sh benchmarks/gpu_check.sh [OUT_DIR] [ARTIFACTS]
#
# ARTIFACTS: the shipped nano's FP32 artifacts exported on another machine (eov-export onnx --out DIR);
# a Jetson on JetPack 6 has no PyTorch to export with. Without it the check exports here.
#
# First a preflight says what is there and what is missing (a GPU, TensorRT, cuda-python matching the
# driver's CUDA, ONNX Runtime's CUDA provider with a session actually run, PyTorch, pytest, hypothesis)
# and how to get it; nothing is installed or removed. Then the checks, fast ones first:
#   1. the TensorRT and CUDA tests (EOV_GPU_CHECK=1: a test that would skip on a CPU machine fails);
#   2. the device preset read from the GPU; FP16 engines of the shipped nano and eov-run on them;
#   3. latency of the runtime against PyTorch on the same GPU;
#   4. the trt-int8 gate and INT8 engines.
# Every step is recorded in OUT_DIR/gpu_check.json as passed, failed or not run, with its reason; the
# script exits 0 only if every step ran and passed.
set -u
OUT="${1:-gpu_check}"
GIVEN="${2:-}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
export EOV_GPU_CHECK=1
RESULTS="$OUT/gpu_check.json.parts"
: > "$RESULTS"

json_string() {  # the argument as a JSON string (quotes, backslashes and control characters escaped)
    "$PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1" 2>/dev/null || printf '"%s"' "unprintable"
}

record() {  # record NAME STATUS REASON [SECONDS]
    echo "  {\"name\": \"$1\", \"status\": \"$2\", \"reason\": $(json_string "$3"), \"seconds\": ${4:-0}}" >> "$RESULTS"
    echo "$1: $2${3:+ ($3)}"
}

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record passed or failed with the log's last line
    name="$1"; shift
    started=$(date +%s)
    if "$@" > "$OUT/$name.log" 2>&1; then
        record "$name" passed "" $(( $(date +%s) - started ))
        return 0
    fi
    record "$name" failed "$(grep -v '^[[:space:]]*$' "$OUT/$name.log" | tail -n 1 | cut -c1-400) (log: $name.log)" \
        $(( $(date +%s) - started ))
    return 1
}

not_run() {  # not_run NAME REASON
    record "$1" "not run" "$2"
}

needs() {  # needs PROBE...: succeed if the preflight found them all, else print what is missing
    "$PYTHON" -m eov_edge.bench.device_check needs "$OUT/preflight.json" "$@"
}

device_from_gpu() {
    "$PYTHON" -c "
from cuda.bindings import runtime as cudart
from eov_edge.export.devices import device_for_compute_capability
err, props = cudart.cudaGetDeviceProperties(0)
assert int(err) == 0, f'no GPU visible ({err})'
print(device_for_compute_capability((props.major, props.minor)).name)"
}

if ! "$PYTHON" -c "import eov_edge" 2>/dev/null; then
    not_run preflight "eov_edge is not importable with $PYTHON: activate the venv and pip install -e '.[device-check,...]'"
else
    step preflight "$PYTHON" -m eov_edge.bench.device_check probe "$OUT/preflight.json"
    cat "$OUT/preflight.log"
fi
[ -f "$OUT/preflight.json" ] || echo '{"probes": []}' > "$OUT/preflight.json"

DEVICE=""
ALL_STEPS="gpu_tests device export engines_fp16 run_fp16 latency quantize_int8 engines_int8"
if ! NO_GPU=$(needs gpu); then
    # a device check without a device: nothing after the preflight runs, so nothing can pass
    for name in $ALL_STEPS; do
        [ "$name" = export ] && [ -n "$GIVEN" ] && name=artifacts
        not_run "$name" "no GPU: $NO_GPU"
    done
else
    # the GPU tests need the nano's artifacts: given, or exported by the suite (PyTorch)
    if [ -n "$GIVEN" ]; then
        export EOV_NANO_ARTIFACTS="$GIVEN"
        TEST_NEEDS="gpu tensorrt cuda_python onnxruntime_cuda pytest hypothesis onnx"
    else
        TEST_NEEDS="gpu tensorrt cuda_python onnxruntime_cuda pytest hypothesis onnx torch"
    fi
    if missing=$(needs $TEST_NEEDS); then
        step gpu_tests "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
            tests/export/test_engine.py::test_tensorrt_engines_match_onnx_runtime_tokens tests/runtime/test_cuda.py \
            --junitxml="$OUT/gpu_tests.xml"
    else
        not_run gpu_tests "$missing"
    fi

    if missing=$(needs gpu cuda_python); then
        if DEVICE="$(device_from_gpu 2>"$OUT/device.log")"; then
            record device passed "$DEVICE"
        else
            record device failed "$(tail -n 1 "$OUT/device.log") (log: device.log)"
            DEVICE=""
        fi
    else
        not_run device "$missing"
    fi

    EXPORTED=""
    NANO="$OUT/nano"
    if [ -n "$GIVEN" ]; then
        NANO="$GIVEN"
        step artifacts "$PYTHON" -c "
    import sys
    from eov_edge.core import manifest as mf
    m = mf.load_manifest(sys.argv[1])  # every file against its sha256
    assert m.model_config.get('preset') == 'nano', f'{sys.argv[1]} holds the {m.model_config.get(\"preset\")} preset, not nano'
    print('artifacts ok:', sys.argv[1])" "$GIVEN" && EXPORTED=1
    elif missing=$(needs torch onnx); then
        step export eov-export onnx --out "$NANO" --overwrite && EXPORTED=1
    else
        not_run export "$missing; or pass artifacts exported elsewhere: sh benchmarks/gpu_check.sh OUT ARTIFACTS"
    fi

    if [ -z "$EXPORTED" ]; then
        not_run engines_fp16 "no FP32 artifacts: the export step did not pass"
        not_run run_fp16 "no FP32 artifacts: the export step did not pass"
    elif [ -z "$DEVICE" ]; then
        not_run engines_fp16 "no device preset: the device step did not pass"
        not_run run_fp16 "no device preset: the device step did not pass"
    elif missing=$(needs tensorrt); then
        if step engines_fp16 eov-export engine --artifacts "$NANO" --device "$DEVICE" --precision fp16 \
                --out "$OUT/engines-fp16" --overwrite; then
            step run_fp16 sh -c "eov-run --artifacts '$NANO' --backend tensorrt --engines '$OUT/engines-fp16' --json \
                --task classification calib_data/optical/ucmerced_airplane00/*.tif > '$OUT/run_fp16.json'"
        else
            not_run run_fp16 "no FP16 engines: the engines_fp16 step failed"
        fi
    else
        not_run engines_fp16 "$missing"
        not_run run_fp16 "$missing"
    fi

    if [ -z "$EXPORTED" ]; then
        not_run latency "no FP32 artifacts: the export step did not pass"
    elif missing=$(needs gpu onnxruntime_cuda torch); then
        step latency "$PYTHON" benchmarks/runtime_latency.py --artifacts "$NANO" --report "$OUT/runtime_latency.json"
    else
        not_run latency "$missing"
    fi

    if [ -z "$EXPORTED" ] || [ -z "$DEVICE" ]; then
        not_run quantize_int8 "needs the export and device steps to pass"
        not_run engines_int8 "needs the export and device steps to pass"
    elif missing=$(needs tensorrt); then
        if step quantize_int8 eov-export quantize --artifacts "$NANO" --recipe trt-int8 --out "$OUT/nano-trt-int8" \
                --overwrite; then
            step engines_int8 eov-export engine --artifacts "$OUT/nano-trt-int8" --device "$DEVICE" \
                --out "$OUT/engines-int8" --overwrite
        else
            not_run engines_int8 "no INT8 artifacts: the quantize_int8 step failed"
        fi
    else
        not_run quantize_int8 "$missing"
        not_run engines_int8 "$missing"
    fi
fi

{ echo "{\"device\": \"$DEVICE\", \"steps\": ["; sed '$!s/$/,/' "$RESULTS"; echo "]}"; } > "$OUT/gpu_check.json"
rm -f "$RESULTS"
echo "every step and its reason: $OUT/gpu_check.json"
if grep -q '"status": "\(failed\|not run\)"' "$OUT/gpu_check.json"; then
    echo "the device check did NOT pass: see the steps failed or not run above" >&2
    exit 1
fi
echo "every step passed"
