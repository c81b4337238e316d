"""``eov-export engine``: plan, prepare and (where TensorRT is importable) build one device's engines.

The output folder holds ``engine_plan.json``, FP16 conversions for TensorRT 11 when needed,
``build_engines.sh`` with ``--trtexec-script``, and after a build the engines, the timing cache and
``engines.json`` (the metadata the TensorRT runner checks). Written to a temporary folder first.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from eov_edge.core.errors import EngineError
from eov_edge.core.paths import staged_folder
from eov_edge.export.devices import get_device
from eov_edge.export.engine_plan import PLAN_FILE, SCRIPT_FILE, make_plan
from eov_edge.export.engine_plan import trtexec_script as make_trtexec_script
from eov_edge.export.tensorrt_build import build_engines, prepare_onnx, write_meta


def installed_tensorrt() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)



def build_engine_folder(artifacts: Path, device: str, precision: str, out: Path, max_batch: int = 1,
                        max_views: int = 4, max_seq: int | None = None, max_kv: int | None = None,
                        workspace_mb: int | None = None, trtexec_script: bool = False, overwrite: bool = False,
                        verbose: bool = False, tensorrt: str | None = None) -> dict:
    """``tensorrt``: plan for this TensorRT release (e.g. pip's 11.4 on an x86 station) instead of the
    device preset's own (its JetPack's); refused where another TensorRT is importable."""
    artifacts, out = Path(artifacts), Path(out)
    preset = get_device(device)
    installed = installed_tensorrt()
    if tensorrt is not None:
        if installed is not None and installed.split(".")[0] != tensorrt.split(".")[0]:
            raise EngineError(f"--tensorrt {tensorrt} but TensorRT {installed} is what builds here; drop --tensorrt")
        preset = dataclasses.replace(preset, tensorrt=tensorrt)
    if installed is not None:
        # The TensorRT that builds decides the typing (11: strongly typed only), not the device's preset.
        preset = dataclasses.replace(preset, tensorrt=installed)
    plan = make_plan(artifacts, preset, precision, max_batch, max_views, max_seq, max_kv, workspace_mb)
    can_build = installed is not None
    if not can_build and not trtexec_script:
        raise EngineError("TensorRT is not importable here (it installs only on the device); pass --trtexec-script "
                          "to write the build commands for the device, or run this on the device")
    if out.exists() and not overwrite:
        raise EngineError(f"{out} exists; pass --overwrite to replace it")
    with staged_folder(out) as staging:
        plan = prepare_onnx(plan, artifacts, staging)
        (staging / PLAN_FILE).write_text(plan.to_json())
        if trtexec_script:
            script = staging / SCRIPT_FILE
            script.write_text(make_trtexec_script(plan))
            os.chmod(script, 0o755)
        built = []
        if can_build:
            metas = build_engines(plan, artifacts, staging, verbose, converted_dir=staging)
            write_meta(staging, metas, plan)
            built = [m.engine_file for m in metas]
    return {"out": str(out), "device": preset.name, "precision": {g.graph: g.precision for g in plan.graphs},
            "memory_mb": plan.memory_mb, "engines_built": built, "trtexec_script": trtexec_script}
