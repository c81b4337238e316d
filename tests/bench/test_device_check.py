"""The device check's preflight and its documented installs: each README line resolves, for its own
platform and Python, to what the check runs (pytest, hypothesis; PyTorch where it exports), with
cuda-python matched to the target's CUDA."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path

import pytest

from eov_edge.bench import device_check

ROOT = Path(__file__).resolve().parents[2]


def requirements(extras: tuple[str, ...]) -> list[str]:
    """The project's requirements with ``extras``, extras of extras expanded (``eov-edge[trt-cu12]``),
    read from the installed metadata (setup.cfg as pip sees it)."""
    from packaging.requirements import Requirement

    declared = [Requirement(r) for r in metadata("eov-edge").get_all("Requires-Dist")]
    wanted, seen, out = list(extras), set(), []
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in declared:
            if req.marker is None and extra != extras[0]:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if req.name == "eov-edge":
                wanted += list(req.extras)
            elif str(req) not in out:
                out.append(str(req).split(";")[0].strip())
    return out


def test_every_documented_install_line_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for target in device_check.INSTALL_TARGETS:
        assert target.line in readme, target.line
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    for target in device_check.INSTALL_TARGETS:
        assert target.line.removeprefix("pip install -e ") in script, target.name


@pytest.mark.slow
@pytest.mark.parametrize("target", device_check.INSTALL_TARGETS, ids=lambda t: t.name)
def test_a_documented_install_resolves_to_what_the_check_needs(target, tmp_path):
    """pip's resolver, for the target's platform tags and Python, on the line's requirements. TensorRT
    itself is left out where it is pip's sdist (it downloads NVIDIA's libraries when built, which a
    dry run cannot do); on a Jetson it is JetPack's."""
    reqs = [r for r in requirements(("",) + target.extras) if not r.startswith("tensorrt")]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(tmp_path / "report.json"), "--python-version", target.python,
               "--implementation", "cp", "--only-binary=:all:", "--disable-pip-version-check"]
    for tag in target.platforms:
        command += ["--platform", tag]
    result = subprocess.run(command + reqs, capture_output=True, text=True, timeout=600)
    if "Max retries exceeded" in result.stderr or "Failed to establish a new connection" in result.stderr:
        pytest.skip("the package index is not reachable from here")
    assert result.returncode == 0, f"{target.line} does not resolve for {target.name}:\n{result.stderr[-3000:]}"
    resolved = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert {"pytest", "hypothesis", "onnx", "onnxruntime", "rasterio"} <= set(resolved), sorted(resolved)
    cuda_major_minor = tuple(int(x) for x in resolved["cuda-python"].split(".")[:2])
    if target.name == "jetpack6":
        assert cuda_major_minor < (12, 7), resolved["cuda-python"]  # JetPack 6's CUDA 12.6
        assert "torch" not in resolved  # transformers 5.24 needs Python 3.11: no export on the device
    elif target.name.endswith("cu12"):
        assert cuda_major_minor[0] == 12
    else:
        assert cuda_major_minor[0] == 13
    if "export" in target.extras:
        assert resolved.get("torch", "").startswith("2.13.0")  # this machine's pip finds the +cpu build first


def test_the_preflight_names_what_is_missing_here_and_exits_non_zero(tmp_path):
    """This machine has no GPU, TensorRT or cuda-python: every one is MISSING with how to get it."""
    out = tmp_path / "preflight.json"
    assert device_check.main(["probe", str(out)]) == 1
    probes = {p["name"]: p for p in json.loads(out.read_text())["probes"]}
    assert set(probes) >= {"gpu", "cuda_python", "tensorrt", "onnxruntime_cuda", "pytest", "hypothesis"}
    assert probes["pytest"]["ok"] and probes["hypothesis"]["ok"]
    for name in ("gpu", "tensorrt", "onnxruntime_cuda"):
        assert not probes[name]["ok"] and re.search(r"pip install|driver", probes[name]["detail"]), probes[name]
    assert device_check.main(["needs", str(out), "pytest", "hypothesis"]) == 0
    assert device_check.main(["needs", str(out), "pytest", "tensorrt"]) == 1
