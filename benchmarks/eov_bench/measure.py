"""What a worker process measures: the machine's floors, and one row's timings (PyTorch eager
``generate()`` or the runtime) on calibration samples. Each row runs in its own process
(:mod:`eov_edge.bench.worker`); nothing here starts one."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


def bench_samples(image_size: int, batch: int):
    """``batch`` single-view calib_data samples with their task's question (cycled if fewer)."""
    from eov_edge.core.calib import calib_questions

    singles = [sample for _, sample in calib_questions(image_size, single_view=True)]
    return [singles[i % len(singles)] for i in range(batch)]


def pytorch_model(where: str):
    """``where``: a checkpoint folder, or ``preset:NAME`` for random weights with seed 0."""
    from eov_edge.model.processor import load_checkpoint, load_model

    if where.startswith("preset:"):
        model, processor = load_model(None, where.split(":", 1)[1], seed=0)
        return model.eval(), processor
    return load_checkpoint(where)


def read_bandwidth_gbs(size_mb: int = 256, repeats: int = 20) -> float:
    """Weight-streaming bandwidth, GB/s: ONNX Runtime's own MatMul of one row against a ``size_mb``
    float32 weight (the decode step's kernel, on every core), median of ``repeats`` (the best is an
    outlier on this VM: 30-52 GB/s between runs). numpy's sum or BLAS GEMV read slower here (25-33
    GB/s against ORT's ~40 GB/s on the same 2 cores), which would put decode steps below their
    "floor"."""
    import numpy as np

    rows = 4096
    weight = np.random.default_rng(0).standard_normal((rows, size_mb * (1 << 20) // 4 // rows), dtype=np.float32)
    return weight.nbytes / _ort_matmul_seconds(np.ones((1, rows), np.float32), weight, repeats) / 1e9


def compute_peak_gflops(size: int = 1024, repeats: int = 20) -> float:
    """FP32 GEMM throughput, GFLOP/s: ONNX Runtime's own MatMul of two ``size`` x ``size`` matrices
    on every core, median of ``repeats``. The first token (encoder, projector, prefill) is dense
    GEMM work, so this is its floor's rate, as :func:`read_bandwidth_gbs` is the decode step's."""
    import numpy as np

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((size, size), dtype=np.float32)
    x = rng.standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / _ort_matmul_seconds(x, weight, repeats) / 1e9


def _ort_matmul_seconds(x, weight, repeats: int) -> float:
    """Median seconds of ONNX Runtime's CPU MatMul ``x @ weight`` (the weight a constant, as in our
    graphs) on every core, after one warm-up run."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_token_gflop(model, processor, samples) -> float:
    """GFLOP of the work every backend must do before the first token: the encoder and projector on
    the views, the prompt through the decoder, logits at the last position only (what the runtime's
    decoder computes). Counted by ``torch.utils.flop_counter`` on the PyTorch model (matrix products
    and convolutions, the attention products included; elementwise ops are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = processor(samples, max_new_tokens=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], modality_ids=batch["modality_ids"],
              attention_mask=batch["attention_mask"], logits_to_keep=1)
    return counter.get_total_flops() / 1e9


def stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def dir_size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and not p.name.endswith(".json")) / 2**20


def weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def bench_pytorch(model, processor, samples, max_new: int, repeats: int) -> dict:
    import torch

    batch = processor(samples, max_new_tokens=max_new)
    with torch.no_grad():
        e2e = timed(lambda: model.generate(**batch, max_new_tokens=max_new), repeats)
        first_batch = processor(samples, max_new_tokens=1)  # built outside the timing, as for end to end
        ttft = timed(lambda: model.generate(**first_batch, max_new_tokens=1), repeats)
        encoder = timed(lambda: model.vision_encoder(batch["pixel_values"], batch["modality_ids"]), repeats)
        features = model.vision_encoder(batch["pixel_values"], batch["modality_ids"])
        projector = timed(lambda: model.projector(features), repeats)
        out = model.generate(**batch, max_new_tokens=max_new)
    tokens = [processor.decode(row.tolist()).token_ids for row in out]
    new_tokens = max(len(t) + 1 for t in tokens)
    return {"encoder_ms": stats(encoder), "projector_ms": stats(projector), "ttft_ms": stats(ttft),
            "e2e_ms": stats(e2e), "new_tokens": new_tokens, "tokens": tokens}


def bench_runtime(artifacts: Path, batch_size: int, max_new: int, repeats: int, draft: Path | None = None) -> dict:
    """``draft``: quantized artifacts whose decoder drafts for the FP32 decoder (speculative decoding)."""
    from eov_edge.core import manifest as mf
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    pipe = Pipeline.from_artifacts(artifacts, thread_pool="shared", draft=draft)
    samples = bench_samples(pipe.spec.image_size, batch_size)
    batch = pipe.batch(samples, max_new)
    greedy = GenerationConfig(max_new_tokens=max_new)
    for runner in pipe.runners.values():
        runner.timings.clear()
    e2e = timed(lambda: pipe.generate_ids(batch, greedy), repeats)
    # one encoder / projector call per run; the first was the warm-up
    encoder = [1000 * t for t in pipe.runners[mf.ENCODER].timings[1:]]
    projector = [1000 * t for t in pipe.runners[mf.PROJECTOR].timings[1:]]
    first_batch = pipe.batch(samples, 1)  # built outside the timing, as for end to end
    ttft = timed(lambda: pipe.generate_ids(first_batch, GenerationConfig(max_new_tokens=1)), repeats)
    ids, _ = pipe.generate_ids(batch, greedy)
    eos, pad = pipe.manifest.special_tokens["eos"], pipe.manifest.special_tokens["pad"]
    tokens = []
    for row in ids.tolist():
        row = row[: row.index(eos)] if eos in row else row
        tokens.append([t for t in row if t != pad])
    decoder_mb = (artifacts / pipe.manifest.graphs[mf.DECODER].file).stat().st_size / 2**20
    row = {"encoder_ms": stats(encoder), "projector_ms": stats(projector), "ttft_ms": stats(ttft),
           "e2e_ms": stats(e2e), "new_tokens": ids.shape[1], "tokens": tokens, "decoder_mb": decoder_mb,
           "size_mb": round(dir_size_mb(artifacts), 2)}
    if pipe.prompt_session is not None:  # which session the runtime measured faster for prompts
        row["prompt_session"] = pipe.prompt_session
    if draft is not None:  # the FP32 artifacts plus what the draft loads: its decoder and token table
        draft_manifest = mf.load_manifest(draft, verify_hashes=False)
        entry = draft_manifest.graphs[mf.DECODER]
        files = [entry.file, entry.external_data, draft_manifest.embedding["file"]]
        row["size_mb"] = round(row["size_mb"] + sum((draft / f).stat().st_size for f in files if f) / 2**20, 2)
        row["speculative"] = pipe.stats()["speculative"]  # of the last generation: the one whose tokens these are
    return row


def peak_rss_row(kind: str, where: str, batch: int, max_new: int, draft: Path | None = None) -> float:
    """Peak RSS (MiB) of this process after one generation of the row: call it in a fresh process."""
    from eov_edge.runtime.pipeline import peak_rss_mb

    if kind == "pytorch":
        import torch

        model, processor = pytorch_model(where)
        samples = bench_samples(model.config.image_size, batch)
        with torch.no_grad():
            model.generate(**processor(samples, max_new_tokens=max_new), max_new_tokens=max_new)
    else:
        from eov_edge.runtime.generation import GenerationConfig
        from eov_edge.runtime.pipeline import Pipeline

        pipe = Pipeline.from_artifacts(where, thread_pool="shared", draft=draft)
        samples = bench_samples(pipe.spec.image_size, batch)
        pipe.generate_ids(pipe.batch(samples, max_new), GenerationConfig(max_new_tokens=max_new))
    return peak_rss_mb()


def time_row(kind: str, where: str, batch: int, max_new: int, repeats: int, draft: Path | None = None) -> dict:
    """:func:`bench_pytorch` (``kind`` "pytorch") or :func:`bench_runtime` of one row."""
    if kind == "pytorch":
        import torch

        torch.set_num_threads(os.cpu_count() or 2)
        model, processor = pytorch_model(where)
        return bench_pytorch(model, processor, bench_samples(model.config.image_size, batch), max_new, repeats)
    return bench_runtime(Path(where), batch, max_new, repeats, draft=draft)


def time_decoder(kind: str, where: str, ids: list[list[int]] | None, max_new: int, repeats: int,
                 embeds: str | None = None, threads: int | None = None, gguf: str | None = None,
                 prefill: str = "onnxruntime") -> dict:
    """The decoder head to head's timing of one row: ORT GenAI (``kind`` "ort-genai") or our decode
    loop on the same prompt token ids, exactly ``max_new`` greedy tokens, first token and decode
    timed from the request (the generator's or our KV buffers are made inside the timing).
    ``embeds``: instead of ids, a .npy of prompt embeddings (1, S, D) (our loop only: a VLM prompt,
    as the llama.cpp head to head feeds both sides). ``threads``: intra-op threads (default: all).
    ``gguf``: decode on llama.cpp from the artifacts' GGUF of this type, the prompt through ``prefill``
    (the runtime's ``--decoder-backend llamacpp``)."""
    import numpy as np

    from eov_edge.runtime.pipeline import peak_rss_mb

    prompt_embeds = None if embeds is None else np.load(embeds).astype(np.float32)  # (1, S, D)
    prompt_ids = np.array(ids, np.int64) if ids is not None else np.zeros(prompt_embeds.shape[:2], np.int64)  # (B, S)
    batch, prompt = prompt_ids.shape
    if kind == "ort-genai":
        import onnxruntime_genai as og

        model = og.Model(og.Config(where))

        def generate(config=None):
            start = time.perf_counter()
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=prompt + max_new, min_length=prompt + max_new, do_sample=False,
                                      batch_size=batch)
            generator = og.Generator(model, params)
            generator.append_tokens(prompt_ids)  # prefill; the first token comes with the first generate_next_token
            generator.generate_next_token()
            first = time.perf_counter()
            while not generator.is_done():
                generator.generate_next_token()
            end = time.perf_counter()
            return first - start, end - first, [generator.get_sequence(b)[prompt:].tolist() for b in range(batch)]
        plain = scored = None
        prompt_session = None
    else:
        from eov_edge.runtime.generation import GenerationConfig
        from eov_edge.runtime.pipeline import Pipeline

        backend = {"decoder_backend": "llamacpp", "gguf": gguf, "prefill": prefill} if gguf else {}
        pipe = Pipeline.from_artifacts(where, thread_pool="shared", threads=threads, **backend)
        # as ORT GenAI: no grammar, no per-token probabilities (GenAI computes none); the scored
        # loop, the runtime's default, is timed beside it
        plain = GenerationConfig(max_new_tokens=max_new, min_new_tokens=max_new, slis_grammar=False,
                                 output_scores=False)
        scored = GenerationConfig(max_new_tokens=max_new, min_new_tokens=max_new, slis_grammar=False)
        mask = np.ones(prompt_ids.shape, np.int64)
        prompt_session = pipe.prompt_session

        def generate(config=plain):
            start = time.perf_counter()
            if prompt_embeds is None:  # (B, S, D): GenAI gathers them in its graph
                embeds = pipe.embed_table[prompt_ids].astype(np.float32)
            else:
                embeds = prompt_embeds
            steps = pipe.decoder.steps(embeds, mask, config)
            chosen = [next(steps).token_ids]
            first = time.perf_counter()
            chosen += [s.token_ids for s in steps]
            end = time.perf_counter()
            return first - start, end - first, np.stack(chosen, 1).tolist()
    generate()  # warm-up
    runs, scored_runs = [], []
    for _ in range(repeats):
        runs.append(generate(plain))
        if scored is not None:
            scored_runs.append(generate(scored))
    steps = max(max_new - 1, 1)
    return {"ttft_ms": [1000 * r[0] for r in runs],
            "decode_ms_per_token": [1000 * r[1] / steps for r in runs],
            "decode_ms_per_token_scored": [1000 * r[1] / steps for r in scored_runs],
            "tokens": runs[-1][2], "tokens_scored": scored_runs[-1][2] if scored_runs else None,
            "prompt_session": prompt_session, "peak_rss_mb": round(peak_rss_mb(), 1)}


def time_questions(kind: str, where: str, questions: list[str], max_new: int, repeats: int, mode: str) -> dict:
    """``eov-bench --questions`` (:mod:`eov_edge.bench.questions`): milliseconds to answer all
    ``questions`` about one image, ``repeats`` times after a warm-up."""
    from eov_edge.core.inputs import Sample
    from eov_edge.runtime.pipeline import peak_rss_mb

    if kind == "pytorch":
        import os

        import torch

        torch.set_num_threads(os.cpu_count() or 2)
        model, processor = pytorch_model(where)
        [image] = bench_samples(model.config.image_size, 1)
        batches = [processor([Sample(views=image.views, instruction=q)], max_new_tokens=max_new) for q in questions]

        def answer_all():
            with torch.no_grad():
                outs = [model.generate(**b, max_new_tokens=max_new, min_new_tokens=max_new) for b in batches]
            return [processor.decode(out[0].tolist()).token_ids for out in outs]
        cache = None
    else:
        from eov_edge.runtime.generation import GenerationConfig
        from eov_edge.runtime.pipeline import Pipeline

        pipe = Pipeline.from_artifacts(where, thread_pool="shared")
        [image] = bench_samples(pipe.spec.image_size, 1)
        config = GenerationConfig(max_new_tokens=max_new, min_new_tokens=max_new)
        asked = [(None, q) for q in questions]

        def one_by_one():
            return [pipe.answer(image.views, prompt=q, generation=config)[0].token_ids for q in questions]

        def answer_all():
            if mode == "alone":
                return one_by_one()
            if mode != "cached":
                pipe.prefix_cache.clear()  # within one call only: what a first call on a new image gets
            answers = pipe.answer_questions(image.views, asked, config, share_prefix=mode != "together")
            return [a.token_ids for a in answers]
        cache = pipe.prefix_cache
    tokens = answer_all()  # warm-up (and, for "cached", the call that fills the cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer_all()
        times.append(1000 * (time.perf_counter() - start))
    result = {"e2e_ms": times, "tokens": tokens, "peak_rss_mb": round(peak_rss_mb(), 1)}
    if cache is not None:
        result["prefix_cache_mb"] = round(cache.nbytes / (1 << 20), 3)
        result["prefix_cache_bound_mb"] = round(cache.max_bytes / (1 << 20), 1)
        alone = one_by_one() if mode != "alone" else tokens  # untimed: each question asked alone
        result["identical_to_alone"] = alone == tokens
    return result


def time_questions_decoder(kind: str, where: str, ids: list[list[int]], shared: int, max_new: int, repeats: int,
                           mode: str) -> dict:
    """Milliseconds to answer the N prompts ``ids`` (N, S): ORT GenAI ("sequential": N requests of one;
    "batch": one request of N) or our decoder ("batch"; "shared": the first ``shared`` tokens once)."""
    import numpy as np

    prompt_ids = np.array(ids, np.int64)  # (N, S)
    n, prompt = prompt_ids.shape
    if kind == "ort-genai":
        import onnxruntime_genai as og

        model = og.Model(og.Config(where))

        def request(rows: np.ndarray) -> list[list[int]]:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=prompt + max_new, min_length=prompt + max_new, do_sample=False,
                                      batch_size=len(rows))
            generator = og.Generator(model, params)
            generator.append_tokens(rows)
            while not generator.is_done():
                generator.generate_next_token()
            return [generator.get_sequence(b)[prompt:].tolist() for b in range(len(rows))]

        def answer_all() -> list[list[int]]:
            if mode == "sequential":
                return [request(prompt_ids[i:i + 1])[0] for i in range(n)]
            return request(prompt_ids)
    else:
        from eov_edge.runtime.generation import GenerationConfig
        from eov_edge.runtime.pipeline import Pipeline

        pipe = Pipeline.from_artifacts(where, thread_pool="shared")
        config = GenerationConfig(max_new_tokens=max_new, min_new_tokens=max_new, slis_grammar=False,
                                  output_scores=False)  # as ORT GenAI: no grammar, no probabilities
        mask = np.ones(prompt_ids.shape, np.int64)

        def answer_all() -> list[list[int]]:
            embeds = pipe.embed_table[prompt_ids].astype(np.float32)  # (N, S, D): GenAI gathers them in its graph
            steps = pipe.decoder.steps(embeds, mask, config, shared_prefix=shared if mode == "shared" else 0)
            return np.stack([s.token_ids for s in steps], 1).tolist()
    tokens = answer_all()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer_all()
        times.append(1000 * (time.perf_counter() - start))
    return {"total_ms": times, "tokens": tokens}
