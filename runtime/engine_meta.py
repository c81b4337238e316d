"""Engine metadata (``engines.json``): what each TensorRT engine was built from and for. The
export side writes it beside the engines; the TensorRT runner reads it and refuses an engine that
this TensorRT, this GPU or these artifacts cannot use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eov_edge.core import manifest as mf
from eov_edge.core.errors import EngineError

META_FILE = "engines.json"
META_VERSION = 1


@dataclass
class EngineMeta:
    """What an engine was built from and for; the TensorRT runner refuses a mismatch."""

    graph: str
    engine_file: str
    engine_sha256: str
    tensorrt_version: str
    compute_capability: list[int]
    device: str
    precision: str
    profiles: list[dict]
    onnx_file: str
    onnx_sha256: str
    source_sha256: str  # the artifacts' graph it was made from
    meta_version: int = META_VERSION


def load_meta(directory: Path) -> list[EngineMeta]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise EngineError(f"{directory}: no {META_FILE}; build the engines with eov-export engine")
    data = json.loads(path.read_text())
    if data.get("meta_version") != META_VERSION:
        raise EngineError(f"{path}: metadata version {data.get('meta_version')}, this eov-edge reads {META_VERSION}")
    return [EngineMeta(**m) for m in data["engines"]]


def _decoder_meta(directory: Path) -> EngineMeta:
    decoder = next((m for m in load_meta(directory) if m.graph == mf.DECODER), None)
    if decoder is None:
        raise EngineError(f"{directory}: {META_FILE} lists no decoder engine; rebuild with eov-export engine")
    return decoder


def engine_max_batch(directory: Path) -> int:
    """The most samples the decoder engine's every optimization profile takes (``inputs_embeds``' first
    axis): the batch the runtime must not exceed."""
    decoder = _decoder_meta(directory)
    sizes = [p["shapes"][mf.INPUTS_EMBEDS]["max"][0] for p in decoder.profiles if mf.INPUTS_EMBEDS in p["shapes"]]
    if not sizes:
        raise EngineError(f"{directory}: the decoder engine's profiles do not name {mf.INPUTS_EMBEDS}; rebuild it")
    return int(min(sizes))


def engine_max_suffix(directory: Path) -> int:
    """The most tokens per row the decoder engine's decode profile feeds on top of a cache (a question's
    own tokens on a shared prefix; 1 for engines planned before suffixes): longer suffixes are
    prefilled whole."""
    decoder = _decoder_meta(directory)
    # the Python builder's "decode" profile; trtexec's one profile spans prefill and decode
    single = decoder.profiles[0] if len(decoder.profiles) == 1 else None
    decode = next((p for p in decoder.profiles if p.get("name") == "decode"), single)
    if decode is None or mf.INPUTS_EMBEDS not in decode["shapes"]:
        return 0
    return int(decode["shapes"][mf.INPUTS_EMBEDS]["max"][1])


def check_engine(meta: EngineMeta, directory: Path, tensorrt_version: str, compute_capability: tuple[int, int],
                 manifest: mf.Manifest | None = None) -> None:
    """Refuse an engine that this TensorRT or GPU cannot run, or that was built from other ONNX."""
    path = Path(directory) / meta.engine_file
    if not path.is_file():
        raise EngineError(f"{path}: engine file missing; rebuild with eov-export engine")
    if mf.sha256_file(path) != meta.engine_sha256:
        raise EngineError(f"{path}: sha256 differs from {META_FILE}; the engine was changed or truncated, rebuild it")
    # An engine runs only on the TensorRT release that built it (engines built version-compatible
    # aside, which these are not); a fourth component is the build number (JetPack's 10.3.0.30).
    if meta.tensorrt_version.split(".")[:3] != tensorrt_version.split(".")[:3]:
        raise EngineError(f"{path}: built with TensorRT {meta.tensorrt_version}, this is {tensorrt_version}; engines "
                          "are not portable across TensorRT versions, rebuild on this device")
    if tuple(meta.compute_capability) != tuple(compute_capability):
        raise EngineError(f"{path}: built for compute capability {tuple(meta.compute_capability)}, this GPU is "
                          f"{tuple(compute_capability)}; rebuild on this device (eov-export engine --device ...)")
    if manifest is not None:
        entry = manifest.graphs.get(meta.graph)
        if entry is None or entry.sha256 != meta.source_sha256:
            raise EngineError(f"{path}: built from another {meta.graph} graph than these artifacts; rebuild")
