"""The rows of eov-bench's table, typed: what each one runs, and the helpers that read a row's rounds.

``Row`` values are the labels the report shows and its JSON is keyed by; code selects rows by their
members (``Row.FP32``, ``Row.of_recipe("ort-cpu-int8")``), never by parsing labels.
"""

from __future__ import annotations

import statistics
from enum import Enum

RECIPES = ("ort-cpu-int8", "ort-cpu-int4")  # the CPU recipes eov-bench times
DEFAULT_DRAFT = "ort-cpu-int8"  # the speculative row's draft (batch 1)


class Row(str, Enum):
    PYTORCH = "pytorch eager"
    FP32 = "runtime fp32"
    FP32_PORTABLE = "runtime fp32 portable"
    INT8 = "runtime ort-cpu-int8"
    INT4 = "runtime ort-cpu-int4"
    FP32_INT8_DRAFT = "runtime fp32 + int8 draft"
    FP32_INT4_DRAFT = "runtime fp32 + int4 draft"

    @classmethod
    def of_recipe(cls, recipe: str) -> "Row":
        return {"ort-cpu-int8": cls.INT8, "ort-cpu-int4": cls.INT4}[recipe]

    @classmethod
    def speculative(cls, draft_recipe: str) -> "Row":
        return {"ort-cpu-int8": cls.FP32_INT8_DRAFT, "ort-cpu-int4": cls.FP32_INT4_DRAFT}[draft_recipe]

    @property
    def recipe(self) -> str | None:
        """The quantization recipe of the row's artifacts (None: FP32 or PyTorch)."""
        return {Row.INT8: "ort-cpu-int8", Row.INT4: "ort-cpu-int4"}.get(self)

    @property
    def draft_recipe(self) -> str | None:
        return {Row.FP32_INT8_DRAFT: "ort-cpu-int8", Row.FP32_INT4_DRAFT: "ort-cpu-int4"}.get(self)

    @property
    def fp32(self) -> bool:
        """Whether the FP32 GEMM floor applies (quantized rows run other kernels)."""
        return self in (Row.PYTORCH, Row.FP32, Row.FP32_PORTABLE)

    @property
    def peer_precision(self) -> str | None:
        """The row's name in the decoder head to head with ORT GenAI (None: not in it)."""
        return {Row.FP32: "fp32", Row.FP32_PORTABLE: "fp32-portable", Row.INT8: "int8", Row.INT4: "int4"}.get(self)

    @property
    def floor_reason(self) -> str:
        """Why a decode step of this row can sit above its weight-streaming floor."""
        if self.draft_recipe:
            return ("speculative: draft steps and checks on top of the FP32 work; it pays only where an FP32 step "
                    "costs several draft steps and most proposals are kept (acceptance below)")
        if self is Row.PYTORCH:
            return "eager PyTorch: one kernel launch and allocation per op, the KV cache grown by concatenation"
        if self is Row.INT8:
            return ("dynamic INT8 quantizes every MatMul's activations at run time and accumulates in int32: "
                    "compute and extra ops on top of a quarter of the fp32 weight bytes")
        if self is Row.INT4:
            return "MatMulNBits unpacks 4-bit blocks and their scales in the kernel: compute per weight byte is high"
        return "per-op and per-step overhead (graph ops besides the MatMuls, the Python loop) on a short step"


# The FP32 rows in the order fp32_floors looks for the runtime's: the first present counts
FP32_ROWS = (Row.FP32, Row.FP32_PORTABLE, Row.PYTORCH)


def merge_rounds(runs: list[dict]) -> dict:
    """One row from its rounds: each timing's median is the median of the rounds' medians, its min
    and max those of all runs; everything else (tokens, sizes) from the first round."""
    row = dict(runs[0])
    for key in ("encoder_ms", "projector_ms", "ttft_ms", "e2e_ms"):
        row[key] = {"median": round(statistics.median(r[key]["median"] for r in runs), 3),
                    "min": min(r[key]["min"] for r in runs), "max": max(r[key]["max"] for r in runs)}
    row["e2e_ms_rounds"] = [r["e2e_ms"]["median"] for r in runs]
    if chosen := prompt_sessions_chosen(runs):
        row["prompt_session_chosen"] = chosen
    return row


def prompt_sessions_chosen(runs: list[dict]) -> dict[str, int]:
    """How often each prompt session was chosen over a row's rounds (each round's process measured it
    afresh, :mod:`eov_edge.runtime.prompt_kernel`); empty where the runtime measured nothing."""
    sessions = [r["prompt_session"]["chosen"] for r in runs if r.get("prompt_session")]
    return {name: sessions.count(name) for name in sorted(set(sessions))}


def session_name(runner: str) -> str:
    """The prompt session's name for people: a runner name of :func:`eov_edge.runtime.prompt_kernel.time_prompt_kernels`."""
    from eov_edge.core import manifest as mf

    return "decode session (int8-compute kernel)" if runner == mf.DECODER else "prefill session (fp32-compute kernel)"


def prompt_sessions_line(name: str, chosen: dict[str, int]) -> str:
    """The markdown sentence saying which session ran a row's prompts (``prompt_sessions_chosen``)."""
    return (f"{name}: prompts ran in the session measured faster at start-up (the manifest allows either kernel), "
            "in the rounds' processes: " + ", ".join(f"{session_name(k)} {n}x" for k, n in chosen.items()))
