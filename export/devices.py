"""TensorRT targets: device presets and the precision policy.

A preset carries what the engine plan needs to know about a device: compute capability (which
precisions its tensor cores have), memory (Jetson memory is shared with the CPU, so the budget is
smaller than the module's label), and the TensorRT it ships with. The policy maps a requested
precision to a per-graph precision and refuses what the device or the artifacts cannot do, before
any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from eov_edge.core import manifest as mf
from eov_edge.core.errors import EngineError

PRECISIONS = ("auto", "fp32", "fp16", "int8", "fp8", "w4a16")
# quantization recipe whose artifacts carry each precision's Q/DQ (eov-export quantize)
RECIPE_FOR = {"int8": "trt-int8", "fp8": "trt-fp8", "w4a16": "w4a16"}


@dataclass(frozen=True)
class DevicePreset:
    name: str
    compute_capability: tuple[int, int]
    memory_gb: float  # usable by engines + KV cache (Jetson: shared with the CPU, minus the OS)
    jetson: bool
    tensorrt: str  # what the device's standard stack ships (JetPack or the CUDA container)
    description: str

    @property
    def sm(self) -> int:
        return 10 * self.compute_capability[0] + self.compute_capability[1]

    @property
    def has_fp8(self) -> bool:  # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell/Thor
        return self.compute_capability >= (8, 9)


DEVICES: dict[str, DevicePreset] = {d.name: d for d in (
    DevicePreset("orin-nano", (8, 7), 6.0, True, "10.3", "Jetson Orin Nano 8 GB (JetPack 6), ~6 GB usable"),
    DevicePreset("orin-nx", (8, 7), 13.0, True, "10.3", "Jetson Orin NX 16 GB (JetPack 6), ~13 GB usable"),
    DevicePreset("agx-orin", (8, 7), 56.0, True, "10.3", "Jetson AGX Orin 64 GB (JetPack 6), ~56 GB usable"),
    DevicePreset("thor", (11, 0), 110.0, True, "10.13",
                 "Jetson Thor 128 GB (JetPack 7.0/7.1: TensorRT 10.13, CUDA 13), ~110 GB usable"),
    DevicePreset("l4", (8, 9), 22.0, False, "10.3", "NVIDIA L4 24 GB ground-station GPU"),
    DevicePreset("l40s", (8, 9), 44.0, False, "10.3", "NVIDIA L40S 48 GB ground-station GPU"),
    DevicePreset("h100", (9, 0), 76.0, False, "10.3", "NVIDIA H100 80 GB ground-station GPU"),
)}


def device_for_compute_capability(compute_capability: tuple[int, int]) -> DevicePreset:
    """The first preset of this GPU's compute capability (Orin Nano/NX/AGX share 8.7: the smallest
    memory, the safest plan)."""
    for device in DEVICES.values():
        if device.compute_capability == tuple(compute_capability):
            return device
    raise EngineError(f"no device preset for compute capability {tuple(compute_capability)}; choose one of "
                      f"{', '.join(DEVICES)} with --device")


def get_device(name: str) -> DevicePreset:
    if name not in DEVICES:
        raise EngineError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    return DEVICES[name]


def resolve_precision(device: DevicePreset, requested: str, manifest: mf.Manifest) -> dict[str, str]:
    """Precision per graph for ``requested`` on ``device`` with these artifacts, or EngineError.

    fp32: FP32 artifacts built in FP32 with TF32 off (the reference engine: tokens as ONNX Runtime's).
    fp16: FP32 artifacts built in FP16. int8 / fp8 / w4a16: the artifacts must come from the
    matching ``eov-export quantize`` recipe (explicit Q/DQ; TensorRT takes the precision from it).
    auto: what the artifacts carry; FP32 artifacts -> FP16.
    """
    if requested not in PRECISIONS:
        raise EngineError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    recipe = manifest.quantization.get("recipe") if manifest.quantization else None
    if requested == "auto":
        requested = {r: p for p, r in RECIPE_FOR.items()}.get(recipe, "fp16")
        if recipe and requested == "fp16":
            raise EngineError(f"artifacts quantized with {recipe!r} are for ONNX Runtime on CPU, not TensorRT; "
                              "use the FP32 export or a trt-int8 / trt-fp8 / w4a16 quantization")
    if requested == "fp8" and not device.has_fp8:
        raise EngineError(
            f"FP8 needs compute capability 8.9 or newer; {device.name} is "
            f"{device.compute_capability[0]}.{device.compute_capability[1]} (no FP8 tensor cores). Use "
            "--precision int8 (eov-export quantize --recipe trt-int8) or w4a16 on this device"
        )
    if requested in ("fp32", "fp16"):
        if recipe is not None:
            raise EngineError(f"--precision {requested} builds from FP32 artifacts; these were quantized with {recipe!r}")
        return {g: requested for g in (mf.ENCODER, mf.PROJECTOR, mf.DECODER)}
    wanted = RECIPE_FOR[requested]
    if recipe != wanted:
        raise EngineError(
            f"--precision {requested} needs artifacts quantized with {wanted!r} (explicit Q/DQ), these are "
            f"{'FP32' if recipe is None else repr(recipe)}; run: eov-export quantize --artifacts FP32_DIR "
            f"--recipe {wanted} --out DIR"
        )
    quantized = set(manifest.quantization.get("graphs", {}))
    # Graphs the recipe left in float run in FP16 (w4a16: the encoder and projector).
    return {g: (requested if g in quantized else "fp16") for g in (mf.ENCODER, mf.PROJECTOR, mf.DECODER)}
