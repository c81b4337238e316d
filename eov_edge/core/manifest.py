"""The export manifest: what the device needs to run the graphs exactly as training ran the model.

Torch-free: written by ``eov-export`` and read by the runtime on the device. Graph names, I/O names
and the file layout are constants here so both sides agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eov_edge.core import bands, slis
from eov_edge.core.errors import EOVError

MANIFEST_FILE = "manifest.json"
# 3: the ONNX Runtime CPU decoder takes logits_index, input_ids and embed_table and returns
# next_tokens; the portable decoder's present outputs hold the new positions only (B, KV, S, hd).
# The runtime reads this version only: older artifacts are refused with "re-export".
MANIFEST_FORMAT_VERSION = 3

ENCODER, PROJECTOR, DECODER = "encoder", "projector", "decoder"
GRAPH_FILES = {ENCODER: "encoder.onnx", PROJECTOR: "projector.onnx", DECODER: "decoder.onnx"}
EMBEDDING_FILE = "embed_tokens.npy"  # (vocab, Dlm) float32 table the runtime gathers from

PIXEL_VALUES, MODALITY_IDS, FEATURES, IMAGE_EMBEDS = "pixel_values", "modality_ids", "features", "image_embeds"
INPUTS_EMBEDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "inputs_embeds", "attention_mask", "position_ids", "logits"
# The ONNX Runtime CPU decoder (export/ort_decoder.py) takes row lengths instead of a mask.
SEQLENS_K, TOTAL_SEQUENCE_LENGTH = "seqlens_k", "total_sequence_length"
# ... and which fed positions get logits (K,) i64.
LOGITS_INDEX = "logits_index"
# ... and token ids fed after the inputs_embeds rows (B, S') i64, gathered in the graph from the
# embedding table the runtime binds (V, D), and each logits position's argmax (B, K) i64: a decode
# step's token goes back in as the next step's input without the host touching the vocabulary.
INPUT_IDS, EMBED_TABLE, NEXT_TOKENS = "input_ids", "embed_table", "next_tokens"
# decoder.onnx kinds: "portable" (standard ops: ONNX Runtime, TensorRT) or "ort-cpu" (fused
# ONNX Runtime contrib ops, a KV buffer shared between past and present)
PORTABLE_DECODER, ORT_CPU_DECODER = "portable", "ort-cpu"
DECODER_KINDS = (PORTABLE_DECODER, ORT_CPU_DECODER)
# quantization["graphs"]["decoder"][PREFILL_SESSION_CONFIG]: ONNX Runtime session config entries of
# a second CPU session on decoder.onnx that runs the prompts (prefill); decode steps keep the first.
# The gate measured the artifacts run that way.
PREFILL_SESSION_CONFIG = "prefill_session_config"
# ... and whether the runtime may run prompts in the decode session instead, where that measures
# faster on the device: "fastest" (the gate accepted both prompt kernels, or the artifacts are
# ungated) or "fixed" (the prefill session only; the default).
PROMPT_KERNEL_CHOICE = "prompt_kernel_choice"
PROMPT_KERNEL_FIXED, PROMPT_KERNEL_FASTEST = "fixed", "fastest"


def past_names(num_layers: int) -> list[str]:
    return [f"past.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


class ManifestError(EOVError, ValueError):
    """Artifacts that do not match their manifest (missing file, changed hash, other version)."""


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: list[int | str]  # ints are fixed, strings are named dynamic axes


@dataclass
class GraphEntry:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    external_data: str | None = None  # file holding the weights when the graph exceeds 2 GB
    external_data_sha256: str | None = None
    opset: int = 18


@dataclass
class Manifest:
    format_version: int
    graphs: dict[str, GraphEntry]
    embedding: dict  # {"file", "sha256", "shape", "dtype"}
    model_config: dict
    tokenizer: dict  # {"file", "sha256"}
    special_tokens: dict[str, int]
    band_table: dict
    image_size: int
    image_tokens_per_view: int
    max_context: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    slis_version: int
    produced_by: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)  # recipe, tools, calibration, gate (quantized artifacts)
    decoder_kind: str = PORTABLE_DECODER
    # the decoder as GGUF for llama.cpp (eov-export gguf): type (f32, q8_0, ...) -> {"file", "sha256", ...}
    gguf: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @property
    def batch_invariant(self) -> bool:
        """Whether a row's answer is the same whatever else shares its decoder calls (other rows of a
        batch, a prefix fed in an earlier call). Not so where activations are quantized at run time
        with one scale per tensor (dynamic INT8): the scale is the max over every token of the call.
        Nor where the decoder's block-quantized MatMuls round a row by the rows that share its call
        (``rows_exact`` false: ONNX Runtime's 4-bit MatMulNBits in blocks over 32 weights)."""
        decoder = self.quantization.get("graphs", {}).get(DECODER, {})
        return not ("dynamic per tensor" in decoder.get("activations", "")
                    or self.quantization.get("recipe") == "ort-cpu-int8"
                    or decoder.get("rows_exact") is False)

    def prefill_session_config(self) -> dict[str, str]:
        """The session config entries of the decoder's prefill session; empty: one session does all."""
        return dict(self.quantization.get("graphs", {}).get(DECODER, {}).get(PREFILL_SESSION_CONFIG) or {})

    def prompt_kernel_choice(self) -> str:
        """PROMPT_KERNEL_FASTEST where the runtime may pick the faster of the prefill and the decode
        session for prompts (both measured by the gate, or no accuracy claimed), else PROMPT_KERNEL_FIXED."""
        choice = self.quantization.get("graphs", {}).get(DECODER, {}).get(PROMPT_KERNEL_CHOICE)
        return PROMPT_KERNEL_FASTEST if choice == PROMPT_KERNEL_FASTEST else PROMPT_KERNEL_FIXED

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        graphs = {
            name: GraphEntry(**{**entry, "inputs": [TensorSpec(**t) for t in entry["inputs"]],
                                "outputs": [TensorSpec(**t) for t in entry["outputs"]]})
            for name, entry in data["graphs"].items()
        }
        return cls(**{**data, "graphs": graphs})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(directory: str | os.PathLike, verify_hashes: bool = True) -> Manifest:
    """Read ``directory/manifest.json`` and check every listed file exists (and its sha256)."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST_FILE}; is this an eov-export artifacts folder?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    version = data.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        raise ManifestError(
            f"{path}: manifest format {version}, this eov-edge reads {MANIFEST_FORMAT_VERSION}; re-export the "
            "artifacts with this version (eov-export onnx)"
        )
    manifest = Manifest.from_dict(data)
    files = [(g.file, g.sha256) for g in manifest.graphs.values()]
    files += [(g.external_data, g.external_data_sha256) for g in manifest.graphs.values() if g.external_data]
    files += [(manifest.embedding["file"], manifest.embedding["sha256"]),
              (manifest.tokenizer["file"], manifest.tokenizer["sha256"])]
    files += [(entry["file"], entry["sha256"]) for entry in manifest.gguf.values()]
    for name, expected in files:
        file = directory / name
        if not file.is_file():
            raise ManifestError(f"{file}: listed in the manifest but missing; copy the whole artifacts folder")
        if verify_hashes and sha256_file(file) != expected:
            raise ManifestError(
                f"{file}: sha256 differs from the manifest; the file was changed or truncated, re-export or "
                "re-copy the artifacts"
            )
    return manifest


def check_compatible(manifest: Manifest, directory: Path) -> None:
    """The canvas and SLIS grammar of the artifacts must be the ones this runtime implements."""
    # The canvas must be the same; this runtime may know band sets the artifacts' exporter did not
    # (they fill the same slots), but every band set the artifacts know must read the same here.
    ours = json.loads(json.dumps(bands.band_table()))
    theirs = manifest.band_table
    changed = [name for name, spec in theirs.get("band_sets", {}).items()
               if name not in ours["band_sets"] or any(ours["band_sets"][name].get(k) != v for k, v in spec.items())]
    if changed or any(theirs.get(key) != ours[key] for key in ("canvas_version", "slots", "modalities")):
        raise ManifestError(
            f"{directory}: the artifacts were exported with band table (canvas version "
            f"{manifest.band_table.get('canvas_version')}) that differs from this eov-edge's (canvas version "
            f"{bands.CANVAS_VERSION}); install the eov-edge version that exported them or re-export"
        )
    if manifest.slis_version != slis.SLIS_VERSION:
        raise ManifestError(f"{directory}: SLIS version {manifest.slis_version}, this runtime decodes "
                            f"{slis.SLIS_VERSION}; re-export with this eov-edge version")
    for name in (ENCODER, PROJECTOR, DECODER):
        if name not in manifest.graphs:
            raise ManifestError(f"{directory}: the manifest lists no {name} graph; re-export the artifacts")
