"""How a face opens the runtime and reads its inputs: typed options, and the command-line flags that fill them.

eov-run and eov-serve take the same flags (``@runtime_flags``) and open their pipeline through
:meth:`RuntimeOptions.open`, so a backend, an engine folder or a draft works the same in both.
``@read_flags`` fill :class:`ReadOptions` (how an IMAGE is read onto the canvas; eov-serve takes the
same fields per request), ``@generation_flags`` a :class:`GenerationConfig`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from eov_edge.core.tasks import SPATIAL_ANSWER_TOKENS, TEXT_ANSWER_TOKENS
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.speculative import DEFAULT_DRAFT_TOKENS


@dataclass(frozen=True)
class RuntimeOptions:
    """The keyword arguments of :meth:`Pipeline.from_artifacts`, typed."""

    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None
    thread_pool: str = "session"  # "shared": one spinning pool for the process (eov-run owns its process)
    verify_hashes: bool = True
    warmup: bool = False
    engines: Path | None = None
    draft: Path | None = None
    draft_tokens: int = DEFAULT_DRAFT_TOKENS
    prefill_session: bool | None = None
    decoder_backend: str = "onnxruntime"  # "llamacpp": single answers decode on llama.cpp (eov-export gguf)
    gguf: str | None = None
    prefill: str | None = None  # with decoder_backend "llamacpp"; None: the handoff where it can be

    def pipeline_kwargs(self) -> dict:
        """As :meth:`Pipeline.from_artifacts` (and a Ray worker's pipeline) takes them."""
        return dict(asdict(self), providers=list(self.providers))

    def open(self, artifacts: str | os.PathLike):
        from eov_edge.runtime.pipeline import Pipeline

        return Pipeline.from_artifacts(artifacts, **self.pipeline_kwargs())

    @classmethod
    def from_flags(cls, flags: dict, **overrides) -> "RuntimeOptions":
        """From the values of :func:`runtime_flags` (removed from ``flags``)."""
        return cls(backend=flags.pop("backend"), providers=tuple(flags.pop("providers").split(",")),
                   threads=flags.pop("threads"), verify_hashes=not flags.pop("no_verify"), warmup=flags.pop("warmup"),
                   engines=flags.pop("engines"), draft=flags.pop("draft"), draft_tokens=flags.pop("draft_tokens"),
                   prefill_session=flags.pop("prefill_session"), decoder_backend=flags.pop("decoder_backend"),
                   gguf=flags.pop("gguf"), prefill=flags.pop("prefill"), **overrides)


def runtime_flags(command):
    """The flags that choose and open the runtime, shared by eov-run and eov-serve."""
    flags = [
        click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime",
                     show_default=True),
        click.option("--engines", type=click.Path(path_type=Path), default=None,
                     help="TensorRT engine folder (eov-export engine) for --backend tensorrt"),
        click.option("--providers", default="cpu", show_default=True, help="ONNX Runtime providers, e.g. cuda,cpu"),
        click.option("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)"),
        click.option("--draft", type=click.Path(path_type=Path), default=None,
                     help="quantized artifacts of the same checkpoint (eov-export quantize) whose decoder drafts "
                          "tokens for the FP32 decoder to check: the same answers, fewer FP32 steps (one image, greedy)"),
        click.option("--draft-tokens", type=int, default=DEFAULT_DRAFT_TOKENS, show_default=True,
                     help="most tokens the draft proposes per FP32 decoder call"),
        click.option("--prefill-session/--no-prefill-session", default=None,
                     help="INT4 CPU artifacts: run prompts in a second decoder session with the fp32 kernel (memory "
                          "for a second copy of the 4-bit decoder weights) / in the decode session. Default: as the "
                          "manifest says; where the gate accepted both, the faster one measured at start-up"),
        click.option("--decoder-backend", type=click.Choice(["onnxruntime", "llamacpp"]), default="onnxruntime",
                     show_default=True,
                     help="llamacpp (CPU hosts, needs llama-cpp-python): single answers decode on llama.cpp from the "
                          "artifacts' GGUF (eov-export gguf), faster per token on CPU; batches stay on ONNX Runtime"),
        click.option("--gguf", type=click.Choice(["f32", "q8_0", "q4_0", "q4_k_m"]), default=None,
                     help="which of the artifacts' GGUF decoders (default: the only one, or f32)"),
        click.option("--prefill", type=click.Choice(["onnxruntime", "llamacpp"]), default=None,
                     help="with --decoder-backend llamacpp: the prompt through ONNX Runtime, its keys and values handed "
                          "to llama.cpp (faster first token; both engines' weights in memory), or through llama.cpp "
                          "(one copy of the weights). Default: onnxruntime where the artifacts have the fused CPU "
                          "decoder (eov-export onnx --decoder ort-cpu), else llamacpp"),
        click.option("--warmup", is_flag=True, help="run each graph once before answering"),
        click.option("--no-verify", is_flag=True, help="skip the artifacts' sha256 check (faster start-up)"),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


@dataclass(frozen=True)
class ReadOptions:
    """How each image is read onto the model's canvas, where the file itself does not say."""

    band_set: str | None = None  # the sensor band set, when it cannot be guessed
    bands: str | None = None  # band names of multi-band files without band descriptions, in file order
    nodata: float | None = None  # an extra nodata value

    def read(self, pipeline, sources, window=None):
        """One view of ``sources`` (as :meth:`Pipeline.read` takes them) through ``pipeline``."""
        return pipeline.read(sources, band_set=self.band_set, window=window, nodata=self.nodata, bands=self.bands)

    @classmethod
    def from_flags(cls, flags: dict) -> "ReadOptions":
        """From the values of :func:`read_flags` (removed from ``flags``)."""
        return cls(band_set=flags.pop("band_set"), bands=flags.pop("bands"), nodata=flags.pop("nodata"))


def read_flags(command):
    """The flags that say how to read images the files do not describe."""
    flags = [
        click.option("--band-set", default=None, help="sensor band set of the images, when it cannot be guessed"),
        click.option("--bands", default=None,
                     help="band names of multi-band files without band descriptions, in file order (B04,B03,B02,B08): "
                          "any subset of one sensor's bands"),
        click.option("--nodata", type=float, default=None, help="extra nodata value"),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def generation_from_flags(flags: dict, default_tokens: int) -> GenerationConfig:
    """The :class:`GenerationConfig` of :func:`generation_flags`' values (removed from ``flags``);
    ``default_tokens`` where --max-new-tokens is not given."""
    max_new_tokens = flags.pop("max_new_tokens")
    return GenerationConfig(max_new_tokens=default_tokens if max_new_tokens is None else max_new_tokens,
                            do_sample=flags.pop("do_sample"), temperature=flags.pop("temperature"),
                            top_k=flags.pop("top_k"), seed=flags.pop("seed"))


def generation_flags(command):
    """The flags that say how to decode an answer."""
    flags = [
        click.option("--max-new-tokens", type=int, default=None, help=f"default: {SPATIAL_ANSWER_TOKENS} for tasks whose answers carry shapes, "
                                                                     f"{TEXT_ANSWER_TOKENS} otherwise"),
        click.option("--sample", "do_sample", is_flag=True, help="sample instead of greedy decoding"),
        click.option("--temperature", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command
