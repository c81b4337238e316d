"""Decoder head to head: our runtime's decode loop against ONNX Runtime GenAI, same weights, one run.

ONNX Runtime GenAI (``onnxruntime-genai``: a C++ generation loop over ORT, fused
GroupQueryAttention, KV buffers shared between past and present) is the mature peer for a
Qwen2-style decoder on CPU. Its model builder takes our decoder as transformers saves it
(``Qwen2ForCausalLM``), at fp32 and int4 (``MatMulNBits``, symmetric, accuracy level 4, the block size of our
``ort-cpu-int4`` row: the settings of our recipe). Configured fairly: intra-op threads = the cores,
``past_present_share_buffer`` with ``max_length`` = prompt + new tokens, ``prune_lm_head``.

Both sides get the same prompt token ids (text only: GenAI's builder takes token ids, so the image
embeddings are left out of this comparison; the end-to-end rows of ``eov-bench`` have them) and
generate exactly ``max_new`` tokens greedily (EOS suppressed until then, ``min_new_tokens``), ours
without per-token probabilities as GenAI computes none (``output_scores=False``; the runtime's
default loop, which reports them, is timed in the same process and reported beside it).
PyTorch ``generate()`` on the same ids is the token reference for the fp32 rows. Every row runs in
its own process (:mod:`eov_edge.bench.worker`; no shared thread pools), in ``rounds`` interleaved rounds (ours, then GenAI, ...).
The machine's speed drifts by 10-20% over minutes (a shared VM), so the comparison is paired: each
round's ratio of medians (ours / GenAI, measured seconds apart), and its median over the rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from eov_edge.bench.artifacts import int4_folder
from eov_edge.bench.rows import prompt_sessions_chosen, prompt_sessions_line
from eov_edge.bench.worker import run_worker
from eov_edge.quantize.recipes import DEFAULT_INT4_BLOCK_SIZE

# peer precision -> the builder's precision flag and extra options
PEER_PRECISIONS = {"fp32": "fp32", "int4": "int4"}


PEER_MIN_ROUNDS = 4  # the head to head's spread between rounds on a shared 2-core machine is +-20%


def peer_extra_options(int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> str:
    """The model builder's options: int4 as our ``ort-cpu-int4`` recipe makes it (same block size)."""
    # (onnxruntime-genai 0.18 reads "block_size" and "accuracy_level"; the older int4_ names are ignored)
    return f"prune_lm_head=true block_size={int4_block_size} accuracy_level=4"


def genai_available() -> str | None:
    """None if onnxruntime-genai imports, else why not."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as err:
        return f"onnxruntime-genai is not installed ({err}); pip install 'eov-edge[bench]'"
    return None


def build_ort_genai(language_model, out: Path, precision: str, threads: int, eos_token_id: int,
                    int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> Path:
    """GenAI model folder ``out`` for our decoder weights at ``precision`` (fp32 or int4)."""
    out = Path(out)
    if (out / "genai_config.json").is_file():
        return out
    source = out.with_name(out.name + ".hf")
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    if not (source / "config.json").is_file():
        language_model.save_pretrained(source)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(source), "-i", str(source),
               "-o", str(work), "-p", PEER_PRECISIONS[precision], "-e", "cpu", "-c", str(work / "cache"),
               "--extra_options", *peer_extra_options(int4_block_size).split()]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not (work / "genai_config.json").is_file():
        raise RuntimeError(f"onnxruntime-genai's model builder failed:\n{done.stderr[-2000:]}")
    shutil.rmtree(work / "cache", ignore_errors=True)
    config_path = work / "genai_config.json"
    config = json.loads(config_path.read_text())
    decoder = config["model"]["decoder"]
    decoder["session_options"]["intra_op_num_threads"] = threads  # its default ran one thread here
    config["model"]["eos_token_id"] = [eos_token_id]  # the builder adds the tokenizer's guesses
    config["search"]["past_present_share_buffer"] = True
    config_path.write_text(json.dumps(config, indent=2))
    os.replace(work, out)
    return out


def _reference_tokens(language_model, ids: list[list[int]], max_new: int) -> list[list[int]]:
    import torch

    with torch.no_grad():
        out = language_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones(len(ids), len(ids[0]),
                                      dtype=torch.long), max_new_tokens=max_new, min_new_tokens=max_new,
                                      do_sample=False)
    return out[:, len(ids[0]):].tolist()


def peer_round_order(names: list[str], round_index: int) -> list[str]:
    """The order of one round: each of our rows right beside the GenAI row it is compared with (the
    paired ratio then spans seconds, not the whole round, over which this machine drifts), which
    of the two runs first alternating from round to round (a drift within the pair cancels over
    rounds); rows with no GenAI row of their precision (portable, int8) after the pairs."""
    paired, alone = [], []
    for name in names:
        if not name.startswith("ours"):
            continue
        peer = f"ort-genai {name.split()[-1]}"
        if peer in names:
            paired += [name, peer] if round_index % 2 == 0 else [peer, name]
        else:
            alone.append(name)
    rest = [n for n in names if n not in paired and n not in alone]  # GenAI rows without one of ours
    return paired + alone + rest


def run_peer_bench(language_model, ours: dict[str, Path], out: Path, floors_mb: dict[str, float],
                   bandwidth_gbs: float, batch: int, prompt_tokens: int = 200, max_new: int = 32,
                   repeats: int = 5, rounds: int = PEER_MIN_ROUNDS, progress=print,
                   int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> dict:
    """``ours``: precision -> our artifacts (fp32, fp32-portable, int8, int4, the last with blocks of
    ``int4_block_size``); ``floors_mb``: precision -> decoder weight MiB read per token. Returns the
    table rows, keyed ``ours fp32`` ... ``ort-genai int4`` (GenAI's int4 at the same block size)."""
    import numpy as np

    threads = os.cpu_count() or 2
    eos = int(language_model.config.eos_token_id)
    vocab = int(language_model.config.vocab_size)
    rng = np.random.default_rng(0)
    ids = rng.integers(8, vocab, size=(1, prompt_tokens)).repeat(batch, 0).tolist()  # same prompt per row
    rows_where = {f"ours {p}": ("ours", Path(d)) for p, d in ours.items()}
    for precision in PEER_PRECISIONS:
        progress(f"building the ONNX Runtime GenAI {precision} model")
        folder = f"ort-genai-{precision}"
        if precision == "int4":
            folder = int4_folder(folder, int4_block_size)
        rows_where[f"ort-genai {precision}"] = ("ort-genai", build_ort_genai(
            language_model, Path(out) / "artifacts" / folder, precision, threads, eos, int4_block_size))
    reference = _reference_tokens(language_model, ids, max_new)
    measured: dict[str, list[dict]] = {name: [] for name in rows_where}
    for round_index in range(rounds):
        for name in peer_round_order(list(rows_where), round_index):
            kind, where = rows_where[name]
            progress(f"decoder head to head, round {round_index + 1}/{rounds}: {name}")
            measured[name].append(run_worker("decoder", kind=kind, where=str(where), ids=ids, max_new=max_new,
                                                 repeats=repeats))
    rows = {}
    for name, runs in measured.items():
        precision = name.split()[-1]
        base_precision = precision.split("-")[0]  # "fp32-portable" -> fp32
        decode_rounds = [statistics.median(r["decode_ms_per_token"]) for r in runs]
        ttft_rounds = [statistics.median(r["ttft_ms"]) for r in runs]
        decode = statistics.median(decode_rounds)
        floor = floors_mb.get(precision, floors_mb.get(base_precision, 0.0)) * 2**20 / (bandwidth_gbs * 1e9) * 1000
        scored_rounds = [statistics.median(r["decode_ms_per_token_scored"]) for r in runs
                         if r.get("decode_ms_per_token_scored")]
        rows[name] = {
            "ttft_ms": round(statistics.median(ttft_rounds), 2),
            "decode_ms_per_token": round(decode, 3),
            # ours only: the same loop reporting each token's probability (the runtime's default)
            "decode_ms_per_token_scored": round(statistics.median(scored_rounds), 3) if scored_rounds else None,
            "decode_ms_per_token_rounds": [round(v, 3) for v in decode_rounds],
            "ttft_ms_rounds": [round(v, 2) for v in ttft_rounds],
            "bandwidth_floor_ms": round(floor, 3),
            "decode_vs_floor": round(decode / floor, 2) if floor else None,
            "tokens_identical_to_pytorch": (all(r["tokens"] == reference and r.get("tokens_scored") in (None, reference)
                                                for r in runs) if base_precision == "fp32" else None),
        }
        if chosen := prompt_sessions_chosen(runs):  # where the runtime measured which session runs prompts
            rows[name]["prompt_session_chosen"] = chosen
    for name, row in rows.items():
        peer = rows.get(f"ort-genai {name.split()[-1].split('-')[0]}")
        if name.startswith("ours") and peer:
            # paired: the ratio within each round, then its median over the rounds
            row["decode_vs_ort_genai"] = round(statistics.median(
                a / b for a, b in zip(row["decode_ms_per_token_rounds"], peer["decode_ms_per_token_rounds"])), 3)
            row["ttft_vs_ort_genai"] = round(statistics.median(
                a / b for a, b in zip(row["ttft_ms_rounds"], peer["ttft_ms_rounds"])), 3)
    return {"prompt_tokens": prompt_tokens, "batch": batch, "max_new_tokens": max_new, "repeats": repeats,
            "rounds": rounds,
            "peer_options": {"threads": threads, "extra_options": peer_extra_options(int4_block_size),
                             "past_present_share_buffer": True},
            "rows": rows}


def peer_markdown(peer: dict) -> str:
    lines = [f"## Decoder head to head with ONNX Runtime GenAI: prompt {peer['prompt_tokens']} tokens, batch "
             f"{peer['batch']}, {peer['max_new_tokens']} new tokens",
             "", f"Each row in its own process, {peer['rounds']} interleaved rounds of {peer['repeats']} runs: "
             "median over rounds of each round's median; the ratios to ORT GenAI are paired (within a round). "
             "Floor: decoder weight bytes per token / the weight-streaming bandwidth measured in this run. "
             "Our rows decode as GenAI does, without per-token probabilities; the runtime's default loop, which "
             "reports them, is timed in the same processes (last column).", "",
             "| decoder | first token ms | decode ms/token | floor ms | x floor | x ORT GenAI (decode / first token) "
             "| tokens = PyTorch | decode with probabilities ms/token |", "|---|---|---|---|---|---|---|---|"]
    for name, r in peer["rows"].items():
        versus = (f"{r['decode_vs_ort_genai']:.3f} / {r['ttft_vs_ort_genai']:.3f}"
                  if "decode_vs_ort_genai" in r else "-")
        same = {True: "yes", False: "no", None: "-"}[r["tokens_identical_to_pytorch"]]
        scored = r.get("decode_ms_per_token_scored")
        lines.append(f"| {name} | {r['ttft_ms']:.1f} | {r['decode_ms_per_token']:.2f} | {r['bandwidth_floor_ms']:.2f} "
                     f"| {r['decode_vs_floor']} | {versus} | {same} | {'-' if scored is None else f'{scored:.2f}'} |")
    for name, r in peer["rows"].items():
        if chosen := r.get("prompt_session_chosen"):
            lines += ["", prompt_sessions_line(name, chosen) + "."]
    return "\n".join(lines + [""])
