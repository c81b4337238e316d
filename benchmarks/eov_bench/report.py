"""eov-bench's report: the floors of a run, the Markdown table and the chart."""

from __future__ import annotations

import os
from pathlib import Path

from eov_edge.bench.llamacpp import llamacpp_markdown
from eov_edge.bench.peer import peer_markdown
from eov_edge.bench.rows import FP32_ROWS, Row, prompt_sessions_line, session_name

FLOOR_TARGET = 1.5  # decode ms/token against the weight-streaming floor worth explaining


def fp32_floors(rows: dict, first_token_gflop: float, gemm_gflops: float) -> dict:
    """The most any FP32 row can show against this run's PyTorch (``rows[Row.PYTORCH.value]``): the
    first token at the GEMM rate, every decode step at the weight-streaming rate (the FP32 runtime
    row's ``bandwidth_floor_ms``: its decoder's weight bytes)."""
    base = rows[Row.PYTORCH.value]
    fp32 = next(rows[r.value] for r in FP32_ROWS if r.value in rows)
    decode_steps = max(fp32["new_tokens"] - 1, 1)  # as that row's decode ms/token counts them
    floor_ms = first_token_gflop / gemm_gflops * 1000 + decode_steps * fp32["bandwidth_floor_ms"]
    return {"first_token_gflop": round(first_token_gflop, 3), "fp32_gemm_gflops": round(gemm_gflops, 1),
            "fp32_e2e_floor_ms": round(floor_ms, 1),
            "fp32_speedup_at_floors": round(base["e2e_ms"]["median"] / floor_ms, 2)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# eov-bench: {report['preset']}, batch {report['batch']}, up to {report['max_new_tokens']} new tokens",
             "", f"{m['cpus']} CPU(s), {m['platform']}, memory read {m['read_bandwidth_gbs']} GB/s; "
             f"{report.get('rounds', 1)} interleaved round(s) of {report['repeats']} runs after a warm-up per row: "
             "median over rounds of each round's median (min-max of all runs in brackets); x PyTorch is paired, "
             "the median over rounds of the ratio within a round"
             + (f"; ort-cpu-int4 in blocks of {report['int4_block_size']} weights" if Row.INT4.value
                in report["rows"] and report.get("int4_block_size") else "") + ".", "",
             "| backend | end to end ms | x PyTorch | first token ms (floor) | encoder ms | decode ms/token (floor) | "
             "peak RSS MiB | size MiB | tokens = PyTorch |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        e = r["e2e_ms"]
        first_floor = f" ({r['first_token_floor_ms']:.1f})" if r.get("first_token_floor_ms") is not None else ""
        lines.append(f"| {name} | {e['median']:.1f} [{e['min']:.1f}-{e['max']:.1f}] | {r['speedup_e2e']:.2f} | "
                     f"{r['ttft_ms']['median']:.1f}{first_floor} | {r['encoder_ms']['median']:.1f} | {r['decode_ms_per_token']:.2f} "
                     f"({r['bandwidth_floor_ms']:.2f}) | {r['peak_rss_mb']} | {r['size_mb']} | "
                     f"{'yes' if r['tokens_identical_to_pytorch'] else 'no'} |")
    if f := report.get("floors"):
        lines += ["", f"Floors of this run. First token: {f['first_token_gflop']:.2f} GFLOP (encoder, projector and "
                  "the prompt through the decoder, logits at its last position; torch.utils.flop_counter) at "
                  f"{f['fp32_gemm_gflops']:.0f} GFLOP/s (ONNX Runtime's FP32 MatMul, 1024^3, every core); decode: "
                  f"decoder weight bytes at {m['read_bandwidth_gbs']} GB/s. An FP32 runtime at both floors would "
                  f"take {f['fp32_e2e_floor_ms']:.1f} ms end to end: {f['fp32_speedup_at_floors']:.2f}x this run's "
                  "PyTorch, the most any FP32 row can show here."]
    slow = [(n, r) for n, r in report["rows"].items() if (r.get("decode_vs_floor") or 0) > FLOOR_TARGET]
    if slow:
        lines += ["", f"Decode steps above {FLOOR_TARGET}x their floor, and why:"]
        lines += [f"- {n}: {r['decode_vs_floor']}x ({Row(n).floor_reason})" for n, r in slow]
    for name, r in report["rows"].items():
        if spec := r.get("speculative"):
            calls = spec["rounds"] + 1  # the prefill, then one check per round
            lines += ["", f"{name}: the FP32 decoder checks what the {name.split(' + ')[1]} proposes, up to "
                      f"{spec['draft_tokens']} tokens per call; tokens = the FP32 row's: "
                      f"{'yes' if r.get('tokens_identical_to_fp32') else 'NO'}. In its last run the draft proposed "
                      f"{spec['drafted']} tokens, {spec['accepted']} kept (acceptance {spec['acceptance']}): "
                      f"{r['new_tokens']} tokens in {calls} FP32 decoder calls. Its speed is the acceptance's: "
                      "a model whose answer repeats one token (random weights) accepts everything, a trained "
                      "model's drafts miss more often."]
    for name, r in report["rows"].items():
        if chosen := r.get("prompt_session_chosen"):
            lines += ["", prompt_sessions_line(name, chosen) + f"; the first round's timing of the decoder's weight shapes over a {r['prompt_session']['prompt_tokens']}-token prompt: "
                      + ", ".join(f"{session_name(k)} {ms} ms" for k, ms in r["prompt_session"]["ms"].items())
                      + "."]
    if report.get("quantized_rows_accuracy"):
        lines += ["", "Accuracy of the quantized rows (from their manifests):"]
        lines += [f"- {name}: {status}" for name, status in report["quantized_rows_accuracy"].items()]
    lines += ["", report["note"], ""]
    if report.get("decoder_head_to_head"):
        lines.append(peer_markdown(report["decoder_head_to_head"]))
    if report.get("llamacpp"):
        lines.append(llamacpp_markdown(report["llamacpp"]))
    return "\n".join(lines)


def chart(report: dict, path: Path) -> None:
    """Bar chart of end-to-end ms per backend (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    values = [report["rows"][n]["e2e_ms"]["median"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names, values, color=["#888888"] + ["#2a7ab0"] * (len(names) - 1))
    for y, (v, n) in enumerate(zip(values, names)):
        ax.text(v, y, f" {v:.0f} ms ({report['rows'][n]['speedup_e2e']:.2f}x)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("end to end ms (median), lower is better")
    ax.set_title(f"{report['preset']}, batch {report['batch']}")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
