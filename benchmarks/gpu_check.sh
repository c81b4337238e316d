#!/bin/sh
# The one command to run on a Jetson or a ground-station GPU, from the repository, in a venv with the
# project installed (pip install -e '.[export,trt]'; on JetPack a venv made with
# --system-site-packages sees JetPack's own TensorRT, which is what the engines must be built with):
#
#     sh benchmarks/gpu_check.sh [OUT_DIR]
#
# Fast checks first, the slow accuracy gate last, each recorded in OUT_DIR/gpu_check.json (passed or
# failed, seconds, log file) whatever happens to the others:
#   1. onnxruntime-gpu in place of onnxruntime (with both installed the CUDA provider vanishes);
#   2. the TensorRT and CUDA tests that skip on CPU machines: FP32 engines (TF32 off) give ONNX
#      Runtime's tokens, FP16 engines nearly all of them, the CUDA provider ONNX Runtime's CPU tokens;
#      the device preset is read from the GPU's compute capability;
#   3. FP16 engines of the shipped nano and eov-run on them;
#   4. latency of the runtime against PyTorch on the same GPU;
#   5. the trt-int8 gate (about ten minutes) and INT8 engines.
# It has not run on hardware yet (README, "Deploying on Jetson").
set -u
OUT="${1:-gpu_check}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
RESULTS="$OUT/gpu_check.json.parts"
: > "$RESULTS"

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record the outcome
    name="$1"; shift
    started=$(date +%s)
    if "$@" > "$OUT/$name.log" 2>&1; then status=passed; else status=failed; fi
    echo "  {\"step\": \"$name\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - started )), \"log\": \"$name.log\"}" >> "$RESULTS"
    echo "$name: $status"
    [ "$status" = passed ]
}

cuda_provider() {
    python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"
}
use_onnxruntime_gpu() {
    cuda_provider && return 0
    python -m pip uninstall -y onnxruntime onnxruntime-gpu && python -m pip install onnxruntime-gpu && cuda_provider
}
device_from_gpu() {
    python -c "
from cuda.bindings import runtime as cudart
from eov_edge.export.devices import device_for_compute_capability
err, props = cudart.cudaGetDeviceProperties(0)
assert int(err) == 0, f'no GPU visible ({err})'
print(device_for_compute_capability((props.major, props.minor)).name)"
}

step onnxruntime_gpu use_onnxruntime_gpu
step gpu_tests python -m pytest -q -rs -p no:cacheprovider \
    tests/export/test_engine.py::test_tensorrt_engines_match_onnx_runtime_tokens tests/runtime/test_cuda.py \
    --junitxml="$OUT/gpu_tests.xml"
DEVICE="$(device_from_gpu 2>"$OUT/device.log")" || DEVICE=""
echo "device preset: ${DEVICE:-unknown (see $OUT/device.log)}"
step export eov-export onnx --out "$OUT/nano" --overwrite
if [ -n "$DEVICE" ]; then
    step engines_fp16 eov-export engine --artifacts "$OUT/nano" --device "$DEVICE" --precision fp16 \
        --out "$OUT/engines-fp16" --trtexec-script --overwrite &&
    step run_fp16 sh -c "eov-run --artifacts '$OUT/nano' --backend tensorrt --engines '$OUT/engines-fp16' --json \
        --task classification calib_data/optical/ucmerced_airplane00/*.tif > '$OUT/run_fp16.json'"
fi
step latency python benchmarks/runtime_latency.py --artifacts "$OUT/nano" --report "$OUT/runtime_latency.json"
if [ -n "$DEVICE" ]; then
    step quantize_int8 eov-export quantize --artifacts "$OUT/nano" --recipe trt-int8 --out "$OUT/nano-trt-int8" \
        --overwrite &&
    step engines_int8 eov-export engine --artifacts "$OUT/nano-trt-int8" --device "$DEVICE" \
        --out "$OUT/engines-int8" --overwrite
fi

{ echo "{\"device\": \"$DEVICE\", \"steps\": ["; sed '$!s/$/,/' "$RESULTS"; echo "]}"; } > "$OUT/gpu_check.json"
rm -f "$RESULTS"
echo "what passed: $OUT/gpu_check.json"
