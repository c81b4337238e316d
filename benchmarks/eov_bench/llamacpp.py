"""llama.cpp as a peer of our decoder: the same weights written to GGUF, timed in the same run.

llama.cpp is what a user would run instead of us on a CPU. :func:`artifacts_gguf` writes our decoder
into our artifacts as GGUF (``eov-export gguf``: F32, and Q8_0, Q4_0, Q4_K_M by llama.cpp's own
quantizer). :mod:`eov_edge.bench.llamacpp_decoder` drives llama.cpp through llama-cpp-python's C
API, the leanest loop Python can run (what ``llama-cli`` does per token: one ``llama_decode`` of one
token, the greedy sampler in C), with the prompt fed as embeddings (``llama_batch.embd``): image
embeddings from our projector, then text, as our runtime feeds its decoder. Our rows run the
runtime's decode loop on ONNX Runtime and with ``--decoder-backend llamacpp`` on the same GGUF files.
The F32 model runs with an F32 KV cache and flash attention off, so its tokens can be compared with
PyTorch's; the quantized models with llama.cpp's defaults (F16 KV cache, flash attention as it
chooses), its fastest settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# our precision -> the llama.cpp model it is paired with (Q4_K_M is timed beside, unpaired)
LLAMACPP_PAIRS = {"fp32": "f32", "int8": "q8_0", "int4": "q4_0"}
LLAMACPP_TYPES = ("f32", "q8_0", "q4_0", "q4_k_m")


def llamacpp_available() -> str | None:
    """None if llama-cpp-python and gguf import, else why not."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as err:
        return f"llama-cpp-python or gguf is not installed ({err}); pip install 'eov-edge[bench]'"
    return None


def artifacts_gguf(model, processor, folder: Path, gguf_type: str) -> Path:
    """``folder``'s GGUF decoder of ``gguf_type`` (``eov-export gguf``), written unless it is there
    for these weights: the file our llamacpp rows decode with is the one llama.cpp's rows load."""
    from eov_edge.core import manifest as mf
    from eov_edge.export.gguf_export import add_gguf_to_artifacts
    from eov_edge.model.weights import weights_sha256

    entry = mf.load_manifest(folder, verify_hashes=False).gguf.get(gguf_type)
    if not entry or entry.get("weights_sha256") != weights_sha256(model) or not (Path(folder) / entry["file"]).is_file():
        entry = add_gguf_to_artifacts(folder, gguf_type, model_and_processor=(model, processor))
    return Path(folder) / entry["file"]


def vlm_prompt_embeds(model, processor, prompt_tokens: int, seed: int = 0) -> np.ndarray:
    """(1, S, D) f32: a calibration image's prompt (its image block from our encoder and projector,
    then its question) as the decoder sees it, followed by embeddings of random text ids up to
    ``prompt_tokens`` positions (a longer question), or cut to them."""
    import torch

    from eov_edge.bench.measure import bench_samples
    from eov_edge.core.prompt import SPECIAL_TOKENS

    [sample] = bench_samples(model.config.image_size, 1)
    batch = processor([sample], max_new_tokens=1)
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["modality_ids"])  # (1, S0, D)
        extra = prompt_tokens - embeds.shape[1]
        if extra > 0:
            table = model.get_input_embeddings().weight
            rng = np.random.default_rng(seed)
            # text ids: past our special tokens, within the tokenizer's ids
            ids = torch.from_numpy(rng.integers(len(SPECIAL_TOKENS), processor.tokenizer.vocab_size, size=extra))
            embeds = torch.cat([embeds, table[ids][None]], 1)
    return embeds[:, :prompt_tokens].float().numpy()


def reference_tokens(language_model, embeds: np.ndarray, max_new: int) -> list[int]:
    """PyTorch's greedy tokens after the prompt ``embeds`` (1, S, D), EOS suppressed (``min_new_tokens``)."""
    import torch

    with torch.no_grad():
        out = language_model.generate(inputs_embeds=torch.from_numpy(embeds),
                                      attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                      max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
    return out[0, -max_new:].tolist()


# our rows per precision: the decode loop on ONNX Runtime; on llama.cpp with the prompt through ONNX
# Runtime (handed over); on llama.cpp alone (the runtime's --decoder-backend llamacpp --prefill ...)
OUR_MODES = {"onnxruntime": None, "llamacpp-decode": "onnxruntime", "llamacpp": "llamacpp"}


def llamacpp_round_order(groups: list[list[str]], round_index: int) -> list[str]:
    """One round: each group (llama.cpp's row and ours of its precision) run one after the other,
    the order reversed every other round (a drift within a group cancels over rounds)."""
    order = []
    for group in groups:
        order += group if round_index % 2 == 0 else group[::-1]
    return order


def run_llamacpp_bench(model, processor, ours: dict[str, Path], out: Path, floors_mb: dict[str, float],
                       bandwidth_gbs: float, prompt_tokens: int = 200, max_new: int = 32, repeats: int = 5,
                       rounds: int = 4, thread_counts: tuple[int, ...] | None = None, progress=print) -> dict:
    """``ours``: precision (fp32, int8, int4) -> our artifacts; ``floors_mb``: precision -> decoder weight
    MiB read per token (ours, on ONNX Runtime). Each row in its own process, rounds interleaved,
    ratios to llama.cpp paired within a round."""
    import statistics

    import llama_cpp

    from eov_edge.bench.worker import run_worker
    from eov_edge.core import manifest as mf
    from eov_edge.export.gguf_export import gguf_bytes_per_token

    out = Path(out)
    eos = int(processor.tokenizer.eos_token_id)
    first_folder = Path(next(iter(ours.values())))
    context = mf.load_manifest(first_folder, verify_hashes=False).max_context
    progress("writing the decoder to GGUF (eov-export gguf) and quantizing it with llama.cpp's quantizer")
    gguf_files = {}
    for gguf_type in LLAMACPP_TYPES:  # each beside our artifacts of its precision (or the first folder)
        precision = next((p for p, t in LLAMACPP_PAIRS.items() if t == gguf_type and p in ours), None)
        folder = Path(ours[precision]) if precision else Path(ours.get("int4", first_folder))
        gguf_files[gguf_type] = artifacts_gguf(model, processor, folder, gguf_type)
    embeds = vlm_prompt_embeds(model, processor, prompt_tokens)
    embeds_path = out / "artifacts" / f"llamacpp-prompt-{prompt_tokens}.npy"
    embeds_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(embeds_path, embeds)
    reference = reference_tokens(model.language_model, embeds, max_new)
    cores = os.cpu_count() or 2
    thread_counts = tuple(thread_counts or sorted({cores, 1}, reverse=True))
    gguf_mb = {t: gguf_bytes_per_token(p) / 2**20 for t, p in gguf_files.items()}

    rows_where: dict[str, tuple[str, dict]] = {}
    groups: list[list[str]] = []
    common = {"embeds": str(embeds_path), "max_new": max_new, "repeats": repeats}
    for gguf_type in LLAMACPP_TYPES:
        theirs = f"llama.cpp {gguf_type}"
        rows_where[theirs] = ("llamacpp", {"where": str(gguf_files[gguf_type]), "eos_token_id": eos,
                                           "exact_f32": gguf_type == "f32", "context": context, **common})
        group = [theirs]
        for precision, paired in LLAMACPP_PAIRS.items():
            if paired != gguf_type or precision not in ours:
                continue
            for mode, prefill in OUR_MODES.items():
                name = f"ours {precision} {mode}"
                backend = {"gguf": gguf_type, "prefill": prefill} if prefill else {}
                rows_where[name] = ("decoder", {"kind": "runtime", "where": str(ours[precision]), **backend, **common})
                group.append(name)
        groups.append(group)
    measured = {(threads, name): [] for threads in thread_counts for name in rows_where}
    for round_index in range(rounds):
        for threads in thread_counts:
            for name in llamacpp_round_order(groups, round_index):
                progress(f"llama.cpp head to head, round {round_index + 1}/{rounds}, {threads} thread(s): {name}")
                kind, args = rows_where[name]
                measured[(threads, name)].append(run_worker(kind, threads=threads, **args))
    sections = {}
    for threads in thread_counts:
        rows = {}
        for name, (kind, args) in rows_where.items():
            runs = measured[(threads, name)]
            ours_row = name.startswith("ours")
            precision = name.split()[1]
            decode_rounds = [statistics.median(r["decode_ms_per_token"]) for r in runs]
            ttft_rounds = [statistics.median(r["ttft_ms"]) for r in runs]
            weight_mb = gguf_mb[args["gguf"]] if args.get("gguf") else \
                (floors_mb.get(precision, 0.0) if ours_row else gguf_mb[precision])
            floor = weight_mb * 2**20 / (bandwidth_gbs * 1e9) * 1000
            decode = statistics.median(decode_rounds)
            tokens = [r["tokens"][0] if ours_row else r["tokens"] for r in runs]
            rows[name] = {
                "ttft_ms": round(statistics.median(ttft_rounds), 2),
                "decode_ms_per_token": round(decode, 3),
                "decode_ms_per_token_rounds": [round(v, 3) for v in decode_rounds],
                "ttft_ms_rounds": [round(v, 2) for v in ttft_rounds],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "weights_mb_per_token": round(weight_mb, 2),
                "bandwidth_floor_ms": round(floor, 3),
                "decode_vs_floor": round(decode / floor, 2) if floor else None,
                "tokens_identical_to_pytorch": (all(t == reference for t in tokens)
                                                if precision in ("fp32", "f32") else None),
            }
        for group in groups:
            theirs = rows[group[0]]
            for name in group[1:]:
                row = rows[name]
                row["paired_with"] = group[0]
                row["decode_vs_llamacpp"] = round(statistics.median(
                    a / b for a, b in zip(row["decode_ms_per_token_rounds"], theirs["decode_ms_per_token_rounds"])), 3)
                row["ttft_vs_llamacpp"] = round(statistics.median(
                    a / b for a, b in zip(row["ttft_ms_rounds"], theirs["ttft_ms_rounds"])), 3)
                row["rss_vs_llamacpp"] = round(row["peak_rss_mb"] / theirs["peak_rss_mb"], 3)
        sections[str(threads)] = rows
    return {"prompt_tokens": prompt_tokens, "prompt": "a calibration image's prompt (image block from the projector, "
            "question) then random text ids, fed to both as embeddings", "batch": 1, "max_new_tokens": max_new,
            "context": context, "repeats": repeats, "rounds": rounds, "llama_cpp_python": llama_cpp.__version__,
            "gguf_mb_per_token": {t: round(v, 2) for t, v in gguf_mb.items()},
            "modes": {"onnxruntime": "our decode loop on ONNX Runtime",
                      "llamacpp-decode": "--decoder-backend llamacpp: prompt on ONNX Runtime, handed to llama.cpp",
                      "llamacpp": "--decoder-backend llamacpp --prefill llamacpp: llama.cpp alone under our loop"},
            "threads": sections}


def llamacpp_markdown(section: dict) -> str:
    lines = [f"## Decoder head to head with llama.cpp: VLM prompt of {section['prompt_tokens']} positions as "
             f"embeddings, batch 1, {section['max_new_tokens']} new tokens",
             "", f"llama-cpp-python {section['llama_cpp_python']} (llama.cpp built here), driven through its C API. "
             f"Each row in its own process, {section['rounds']} interleaved rounds of {section['repeats']} runs: "
             "median over rounds of each round's median; the ratios to llama.cpp are paired within a round "
             "(< 1: ours faster). Floor: weight bytes per token / the weight-streaming bandwidth measured in this run. "
             "Our rows: `onnxruntime`, our decode loop on ONNX Runtime; `llamacpp-decode`, `--decoder-backend llamacpp`: "
             "the prompt on ONNX Runtime, its keys and values handed to llama.cpp, decode steps on llama.cpp (both "
             "engines' weights in memory); `llamacpp`, with `--prefill llamacpp`: llama.cpp alone under our loop "
             "(grammar and token rule in Python). Each llamacpp row decodes the GGUF its llama.cpp row loads.",
             ""]
    for threads, rows in section["threads"].items():
        lines += [f"### {threads} thread(s)", "",
                  "| decoder | first token ms | decode ms/token | floor ms | x floor | x llama.cpp (decode / first token "
                  "/ peak RSS) | peak RSS MiB | tokens = PyTorch |", "|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            versus = (f"{r['decode_vs_llamacpp']:.3f} / {r['ttft_vs_llamacpp']:.3f} / {r['rss_vs_llamacpp']:.2f}"
                      if "decode_vs_llamacpp" in r else "-")
            same = {True: "yes", False: "no", None: "-"}[r["tokens_identical_to_pytorch"]]
            lines.append(f"| {name} | {r['ttft_ms']:.1f} | {r['decode_ms_per_token']:.2f} | "
                         f"{r['bandwidth_floor_ms']:.2f} | {r['decode_vs_floor']} | {versus} | {r['peak_rss_mb']:.0f} | "
                         f"{same} |")
        lines.append("")
    return "\n".join(lines)
