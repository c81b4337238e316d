"""llama.cpp as a peer of our decoder: the same weights written to GGUF, timed in the same run.

llama.cpp is what a user would run instead of us on a CPU. :func:`build_llamacpp_models` writes our
decoder to GGUF (:mod:`eov_edge.export.gguf_export`) at F32 and has llama.cpp's own quantizer make
Q8_0, Q4_0 and Q4_K_M. :mod:`eov_edge.bench.llamacpp_decoder` drives it through llama-cpp-python's
C API, the leanest loop Python can run (what ``llama-cli`` does per token: one ``llama_decode`` of
one token, the greedy sampler in C), with the prompt fed as embeddings (``llama_batch.embd``): image embeddings
from our projector, then text, as our runtime feeds its decoder. The F32 model runs with an F32 KV
cache and flash attention off, so its tokens can be compared with PyTorch's; the quantized models
run with llama.cpp's defaults (F16 KV cache, flash attention as it chooses), its fastest settings.

Nothing here is a runtime backend: the runtime never imports llama.cpp.
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


def build_llamacpp_models(language_model, tokenizer_json: Path, out: Path, eos_token_id: int,
                          pad_token_id: int, context_length: int) -> dict[str, Path]:
    """GGUF files of ``language_model`` under ``out``: type -> path (kept between runs of one folder)."""
    from eov_edge.export.gguf_export import quantize_gguf, write_gguf

    out = Path(out)
    f32 = out / "decoder-f32.gguf"
    if not f32.is_file():
        write_gguf(language_model, tokenizer_json, f32, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                   context_length=context_length)
    models = {"f32": f32}
    for gguf_type in LLAMACPP_TYPES[1:]:
        path = out / f"decoder-{gguf_type}.gguf"
        if not path.is_file():
            quantize_gguf(f32, path, gguf_type)
        models[gguf_type] = path
    return models


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


def llamacpp_round_order(pairs: list[tuple[str, str]], alone: list[str], round_index: int) -> list[str]:
    """One round: each of our rows right beside the llama.cpp row it is compared with, which runs
    first alternating from round to round; unpaired rows after."""
    order = []
    for ours, theirs in pairs:
        order += [ours, theirs] if round_index % 2 == 0 else [theirs, ours]
    return order + alone


def run_llamacpp_bench(model, processor, ours: dict[str, Path], out: Path, floors_mb: dict[str, float],
                       bandwidth_gbs: float, prompt_tokens: int = 200, max_new: int = 32, repeats: int = 5,
                       rounds: int = 4, thread_counts: tuple[int, ...] | None = None, progress=print) -> dict:
    """``ours``: precision (fp32, int8, int4) -> our artifacts; ``floors_mb``: precision -> decoder weight
    MiB read per token (ours). Each row in its own process, rounds interleaved, ratios paired."""
    import statistics

    from eov_edge.bench.worker import run_worker
    from eov_edge.core.tokenizer import TOKENIZER_FILE
    from eov_edge.export.gguf_export import gguf_bytes_per_token

    out = Path(out)
    language_model = model.language_model
    tokenizer = processor.tokenizer
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    any_artifacts = next(iter(ours.values()))
    progress("writing the decoder to GGUF and quantizing it with llama.cpp's quantizer")
    gguf_models = build_llamacpp_models(language_model, Path(any_artifacts) / TOKENIZER_FILE,
                                        out / "artifacts" / "llamacpp", eos, pad,
                                        context_length=int(language_model.config.max_position_embeddings))
    embeds = vlm_prompt_embeds(model, processor, prompt_tokens)
    embeds_path = out / "artifacts" / "llamacpp" / f"prompt-{prompt_tokens}.npy"
    np.save(embeds_path, embeds)
    reference = reference_tokens(language_model, embeds, max_new)
    cores = os.cpu_count() or 2
    thread_counts = tuple(thread_counts or sorted({cores, 1}, reverse=True))
    gguf_bytes = {t: gguf_bytes_per_token(p) / 2**20 for t, p in gguf_models.items()}

    def arguments(name: str, threads: int) -> tuple[str, dict]:
        side, label = name.split(" ", 1)
        common = {"embeds": str(embeds_path), "max_new": max_new, "repeats": repeats, "threads": threads}
        if side == "ours":
            return "decoder", {"kind": "runtime", "where": str(ours[label]), **common}
        return "llamacpp", {"where": str(gguf_models[label]), "eos_token_id": eos, "exact_f32": label == "f32",
                            **common}

    pairs = [(f"ours {p}", f"llama.cpp {t}") for p, t in LLAMACPP_PAIRS.items() if p in ours]
    alone = [f"llama.cpp {t}" for t in LLAMACPP_TYPES if f"llama.cpp {t}" not in {b for _, b in pairs}]
    names = [n for pair in pairs for n in pair] + alone
    measured = {(threads, name): [] for threads in thread_counts for name in names}
    for round_index in range(rounds):
        for threads in thread_counts:
            for name in llamacpp_round_order(pairs, alone, round_index):
                progress(f"llama.cpp head to head, round {round_index + 1}/{rounds}, {threads} thread(s): {name}")
                kind, args = arguments(name, threads)
                measured[(threads, name)].append(run_worker(kind, **args))
    sections = {}
    for threads in thread_counts:
        rows = {}
        for name in names:
            runs = measured[(threads, name)]
            label = name.split(" ", 1)[1]
            decode_rounds = [statistics.median(r["decode_ms_per_token"]) for r in runs]
            ttft_rounds = [statistics.median(r["ttft_ms"]) for r in runs]
            weight_mb = floors_mb.get(label) if name.startswith("ours") else gguf_bytes[label]
            floor = (weight_mb or 0.0) * 2**20 / (bandwidth_gbs * 1e9) * 1000
            decode = statistics.median(decode_rounds)
            rows[name] = {
                "ttft_ms": round(statistics.median(ttft_rounds), 2),
                "decode_ms_per_token": round(decode, 3),
                "decode_ms_per_token_rounds": [round(v, 3) for v in decode_rounds],
                "ttft_ms_rounds": [round(v, 2) for v in ttft_rounds],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "weights_mb_per_token": round(weight_mb or 0.0, 2),
                "bandwidth_floor_ms": round(floor, 3),
                "decode_vs_floor": round(decode / floor, 2) if floor else None,
                "tokens_identical_to_pytorch": (all(r["tokens"][0] == reference if name.startswith("ours")
                                                    else r["tokens"] == reference for r in runs)
                                                if label in ("fp32", "f32") else None),
            }
        for ours_name, theirs in pairs:
            a, b = rows[ours_name], rows[theirs]
            a["decode_vs_llamacpp"] = round(statistics.median(
                x / y for x, y in zip(a["decode_ms_per_token_rounds"], b["decode_ms_per_token_rounds"])), 3)
            a["ttft_vs_llamacpp"] = round(statistics.median(
                x / y for x, y in zip(a["ttft_ms_rounds"], b["ttft_ms_rounds"])), 3)
            a["rss_vs_llamacpp"] = round(a["peak_rss_mb"] / b["peak_rss_mb"], 3)
            a["paired_with"] = theirs
        sections[str(threads)] = rows
    import llama_cpp

    return {"prompt_tokens": prompt_tokens, "prompt": "a calibration image's prompt (image block from the projector, "
            "question) then random text ids, fed to both as embeddings", "batch": 1, "max_new_tokens": max_new,
            "repeats": repeats, "rounds": rounds, "llama_cpp_python": llama_cpp.__version__,
            "gguf_mb_per_token": {t: round(v, 2) for t, v in gguf_bytes.items()}, "threads": sections}


def llamacpp_markdown(section: dict) -> str:
    lines = [f"## Decoder head to head with llama.cpp: VLM prompt of {section['prompt_tokens']} positions as "
             f"embeddings, batch 1, {section['max_new_tokens']} new tokens",
             "", f"llama-cpp-python {section['llama_cpp_python']} (llama.cpp built here), driven through its C API. "
             f"Each row in its own process, {section['rounds']} interleaved rounds of {section['repeats']} runs: "
             "median over rounds of each round's median; the ratios to llama.cpp are paired within a round "
             "(< 1: ours faster). Floor: weight bytes per token / the weight-streaming bandwidth measured in this run.",
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
