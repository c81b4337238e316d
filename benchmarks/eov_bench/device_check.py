"""What the device check (``benchmarks/gpu_check.sh``) needs, probed before it starts, with how to get
what is missing: a GPU, TensorRT, cuda-python matching the driver's CUDA, ONNX Runtime's CUDA provider
(a session opened and run, not a provider listed), PyTorch, pytest and hypothesis.

    python -m eov_edge.bench.device_check probe OUT/preflight.json       # every probe; exit 1 if any fails
    python -m eov_edge.bench.device_check needs OUT/preflight.json gpu tensorrt   # exit 1 naming what is missing

Nothing here installs or removes a package: a working ONNX Runtime is never swapped for another.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

JETSON_ORT_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"  # NVIDIA's Jetson AI Lab wheels for JetPack 6


@dataclass(frozen=True)
class InstallTarget:
    """One documented device install: the pip line (README, "Deploying on Jetson"), and the platform
    and Python it is for (tests/bench/test_device_check.py resolves it there)."""

    name: str
    extras: tuple[str, ...]
    platforms: tuple[str, ...]  # pip --platform tags
    python: str
    notes: str

    @property
    def line(self) -> str:
        return f"pip install -e '.[{','.join(self.extras)}]'"


_AARCH64 = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_35_aarch64")
_X86 = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_35_x86_64")
INSTALL_TARGETS = (
    InstallTarget("jetpack6", ("device-check", "jetpack6"), _AARCH64, "3.10",
                  "JetPack 6.1/6.2: TensorRT 10.3 and CUDA 12.6 from JetPack, Python 3.10; a venv made with "
                  "--system-site-packages; artifacts exported on another machine (no PyTorch: transformers "
                  "needs Python 3.11)"),
    InstallTarget("jetpack7", ("device-check", "jetpack7"), _AARCH64, "3.12",
                  "JetPack 7 (Thor): TensorRT and CUDA 13 from JetPack, Python 3.12; the same venv"),
    InstallTarget("x86-cu12", ("export", "device-check", "trt-cu12"), _X86, "3.11",
                  "x86, CUDA 12 driver: pip's TensorRT for CUDA 12"),
    InstallTarget("x86-cu13", ("export", "device-check", "trt-cu13"), _X86, "3.11",
                  "x86, CUDA 13 driver (R580 or newer): pip's TensorRT 11 for CUDA 13"),
)


@dataclass
class Probe:
    name: str
    ok: bool
    detail: str  # what was found, or what is missing and how to get it


def is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").is_file() or (platform.machine() == "aarch64" and Path("/dev/nvhost-ctrl").exists())


def _install_hint() -> str:
    lines = {t.name: t.line for t in INSTALL_TARGETS}
    if is_jetson():
        return (f"on a Jetson: a venv made with --system-site-packages (JetPack's TensorRT), then {lines['jetpack6']} "
                f"(JetPack 6) or {lines['jetpack7']} (JetPack 7)")
    return f"on x86: {lines['x86-cu12']} (CUDA 12 driver) or {lines['x86-cu13']} (driver R580+)"


def probe_gpu() -> Probe:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return Probe("gpu", False, f"cuda-python is not installed, so no GPU can be asked for; {_install_hint()}")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return Probe("gpu", False, f"no NVIDIA GPU visible to CUDA ({err}); check the driver (nvidia-smi, or "
                                   "tegrastats on a Jetson) and CUDA_VISIBLE_DEVICES")
    err, props = cudart.cudaGetDeviceProperties(0)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return Probe("gpu", True, f"{name.strip()}, compute capability {props.major}.{props.minor}")


def probe_cuda_python() -> Probe:
    """cuda-python's major must not exceed the driver's CUDA major (13.x bindings on a CUDA 12 JetPack
    fail with cudaErrorInsufficientDriver)."""
    try:
        from importlib.metadata import version

        from cuda.bindings import runtime as cudart
    except ImportError:
        return Probe("cuda_python", False, f"cuda-python is not installed; {_install_hint()}")
    try:
        bindings = version("cuda-bindings")
    except Exception:
        bindings = version("cuda-python")
    err, driver_version = cudart.cudaDriverGetVersion()
    if int(err) != 0:
        return Probe("cuda_python", False, f"cuda-python {bindings} cannot read the driver's CUDA version ({err})")
    driver_major = driver_version // 1000
    if int(bindings.split(".")[0]) > driver_major:
        return Probe("cuda_python", False, f"cuda-python {bindings} needs a CUDA {bindings.split('.')[0]} driver; this "
                                           f"driver is CUDA {driver_major}: pip install 'cuda-python<{driver_major + 1}'")
    return Probe("cuda_python", True, f"cuda-python {bindings}, driver CUDA {driver_major}.{driver_version % 1000 // 10}")


def probe_tensorrt() -> Probe:
    try:
        import tensorrt
    except ImportError as err:
        return Probe("tensorrt", False, f"TensorRT is not importable ({err}); {_install_hint()}")
    major = int(tensorrt.__version__.split(".")[0])
    if major < 10 or (major == 10 and int(tensorrt.__version__.split(".")[1]) < 3):
        return Probe("tensorrt", False, f"TensorRT {tensorrt.__version__} is older than 10.3 (JetPack 6.0 ships 8.6: "
                                        "not supported; flash JetPack 6.1 or later)")
    return Probe("tensorrt", True, f"TensorRT {tensorrt.__version__}")


def probe_onnxruntime_cuda() -> Probe:
    """A one-node graph run in a session asked for the CUDA provider: listed providers are not enough
    (x86 onnxruntime-gpu lists CUDAExecutionProvider on a machine with no GPU)."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as err:
        return Probe("onnxruntime_cuda", False, f"ONNX Runtime is not importable ({err}): pip install -e .")
    if is_jetson():
        how = (f"ONNX Runtime's CUDA build for Jetson comes from NVIDIA's Jetson wheel index: pip install "
               f"onnxruntime-gpu --index-url {JETSON_ORT_INDEX} (PyPI has no aarch64 onnxruntime-gpu); "
               "until then the CPU onnxruntime keeps working")
    else:
        how = "pip uninstall onnxruntime && pip install onnxruntime-gpu (both installed hide the CUDA provider)"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return Probe("onnxruntime_cuda", False, f"onnxruntime {ort.__version__} has no CUDA provider; {how}")
    try:
        model = _identity_model()
        session = ort.InferenceSession(model, providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            return Probe("onnxruntime_cuda", False, f"a session asked for CUDA fell back to {session.get_providers()}; "
                                                    "check the CUDA and cuDNN libraries this onnxruntime-gpu needs")
        x = np.arange(4, dtype=np.float32)
        if not np.array_equal(session.run(None, {"x": x})[0], x + 1):
            return Probe("onnxruntime_cuda", False, "the CUDA provider computed a wrong x + 1")
    except Exception as err:  # onnxruntime raises its own types for missing libraries and devices
        return Probe("onnxruntime_cuda", False, f"a CUDA session failed ({type(err).__name__}: {err}); {how}")
    return Probe("onnxruntime_cuda", True, f"onnxruntime {ort.__version__}, a CUDA session ran")


def _identity_model() -> bytes:
    """A serialized ONNX graph y = x + 1 (float32[4])."""
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def probe_module(name: str, package: str) -> Probe:
    if importlib.util.find_spec(name) is None:
        return Probe(name, False, f"{package} is not installed: pip install -e '.[device-check]'")
    return Probe(name, True, "installed")


def probe_all() -> list[Probe]:
    probes = [probe_gpu(), probe_cuda_python(), probe_tensorrt(), probe_onnxruntime_cuda()]
    probes += [probe_module(m, p) for m, p in (("torch", "PyTorch (for eov-export onnx)"), ("pytest", "pytest"),
                                               ("hypothesis", "hypothesis (the test suite's conftest imports it)"),
                                               ("onnx", "onnx"))]
    return probes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "probe":
        probes = probe_all()
        data = {"platform": platform.platform(), "jetson": is_jetson(), "python": sys.version.split()[0],
                "probes": [asdict(p) for p in probes]}
        path = Path(argv[1])
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
        for p in probes:
            print(f"{'ok     ' if p.ok else 'MISSING'} {p.name}: {p.detail}")
        missing = [p.name for p in probes if not p.ok]
        print(f"missing: {', '.join(missing)} (how to get each: above)" if missing else "everything the check needs is here")
        return 1 if missing else 0
    if len(argv) >= 3 and argv[0] == "needs":
        found = {p["name"]: p for p in json.loads(Path(argv[1]).read_text())["probes"]}
        missing = [found[n]["detail"] if n in found else f"{n}: not probed" for n in argv[2:]
                   if not found.get(n, {}).get("ok")]
        if missing:
            print("; ".join(dict.fromkeys(missing)))  # one probe's advice can stand for several needs
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
