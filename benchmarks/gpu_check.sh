#!/bin/sh
# The one command to run on a Jetson or a ground-station GPU (TensorRT, cuda-python and
# onnxruntime-gpu installed: pip install -e '.[export,gpu,trt]'):
#
#     sh benchmarks/gpu_check.sh DEVICE [OUT_DIR]        # DEVICE: orin-nano, agx-orin, thor, l4, h100, ...
#
# It exports the shipped nano checkpoint, quantizes it for TensorRT (trt-int8, and trt-fp8 where the
# device has FP8), builds the engines, runs the TensorRT-vs-ONNX-Runtime token test and the CUDA
# provider test, times the runtime against PyTorch on the same GPU, and leaves JSON reports in OUT_DIR.
# Nothing here has run on hardware yet (see README, "What is proven, and what is not").
set -eu
DEVICE="${1:?usage: sh benchmarks/gpu_check.sh DEVICE [OUT_DIR]}"
OUT="${2:-gpu_check_$DEVICE}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

eov-export onnx --out "$OUT/nano" --overwrite
eov-export quantize --artifacts "$OUT/nano" --recipe trt-int8 --out "$OUT/nano-trt-int8" --max-drop 1 --overwrite
eov-export engine --artifacts "$OUT/nano" --device "$DEVICE" --precision fp16 --out "$OUT/engines-fp16" \
    --trtexec-script --overwrite
eov-export engine --artifacts "$OUT/nano-trt-int8" --device "$DEVICE" --out "$OUT/engines-int8" --overwrite
case "$DEVICE" in
    l4|l40s|h100|thor)
        eov-export quantize --artifacts "$OUT/nano" --recipe trt-fp8 --out "$OUT/nano-trt-fp8" --max-drop 1 --overwrite
        eov-export engine --artifacts "$OUT/nano-trt-fp8" --device "$DEVICE" --out "$OUT/engines-fp8" --overwrite ;;
esac

# Tokens: TensorRT engines and the CUDA provider against ONNX Runtime on CPU (the tests that skip elsewhere).
python -m pytest -q -rs tests/export/test_engine.py::test_tensorrt_engines_match_onnx_runtime_tokens \
    tests/runtime/test_cuda.py --junitxml="$OUT/gpu_tests.xml"

# Task metrics on held-out data and latency against PyTorch, same GPU.
python benchmarks/runtime_latency.py --artifacts "$OUT/nano" --report "$OUT/runtime_latency.json"
IMAGE="$(ls calib_data/optical/ucmerced_airplane00/*.tif | head -n 1)"
for pair in "nano engines-fp16" "nano-trt-int8 engines-int8" "nano-trt-fp8 engines-fp8"; do
    set -- $pair
    [ -f "$OUT/$2/engines.json" ] || continue   # engines are tied to the artifacts they were built from
    eov-run --artifacts "$OUT/$1" --backend tensorrt --engines "$OUT/$2" --json --task classification \
        "$IMAGE" > "$OUT/$2_run.json"
done
echo "reports in $OUT"
