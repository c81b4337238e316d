"""Parity of exported graphs with PyTorch: per graph on fresh random inputs, then the whole pipeline
token for token on the real calib_data samples. Every failure is collected before one typed error
with a per-output difference table is raised (optimum ``validate_model_outputs`` style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from eov_edge.core import manifest as mf
from eov_edge.core.calib import calib_questions
from eov_edge.core.errors import EOVError
from eov_edge.core.paths import write_json_atomic
from eov_edge.export.specs import GRAPH_SPECS, Shapes

# Fresh shapes, unlike the export dummies: prefill with no past, left padding, one-token decode.
VALIDATION_CASES: dict[str, list[Shapes]] = {
    mf.ENCODER: [Shapes(views=1), Shapes(views=3)],
    mf.PROJECTOR: [Shapes(views=1), Shapes(views=4)],
    mf.DECODER: [Shapes(batch=1, seq=9, past=0), Shapes(batch=2, seq=6, past=0), Shapes(batch=2, seq=1, past=11),
                 Shapes(batch=3, seq=1, past=40)],
}
MAX_NEW_TOKENS = 32


class ParityError(EOVError, AssertionError):
    """Exported graphs disagree with PyTorch beyond tolerance."""


@dataclass
class OutputDiff:
    graph: str
    case: str
    output: str
    max_abs: float
    mean_abs: float
    atol: float
    ort_optimizer_max_abs: float  # ORT_ENABLE_ALL vs ORT_DISABLE_ALL on the same input

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.atol and self.ort_optimizer_max_abs <= self.atol


def _flatten(inputs) -> list[torch.Tensor]:
    out = []
    for item in inputs:
        out += list(item) if isinstance(item, tuple) else [item]
    return out


def _run_shared_cache(session, embeds: np.ndarray, ids: np.ndarray, table: np.ndarray, seqlens: np.ndarray,
                      total: int, cache: list[np.ndarray], num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """One call of the ORT CPU decoder with ``cache`` bound as both past and present (as the runtime
    does): ``embeds`` (1, S1, D) then the ``table`` rows of ``ids`` (1, S2) fed; logits (1, 1, V)
    and next_tokens (1, 1)."""
    binding = session.io_binding()
    binding.bind_cpu_input(mf.INPUTS_EMBEDS, np.ascontiguousarray(embeds, np.float32))
    binding.bind_cpu_input(mf.INPUT_IDS, np.ascontiguousarray(ids, np.int64))
    binding.bind_cpu_input(mf.EMBED_TABLE, table)
    binding.bind_cpu_input(mf.SEQLENS_K, seqlens.astype(np.int32))
    binding.bind_cpu_input(mf.TOTAL_SEQUENCE_LENGTH, np.array(total, np.int32))
    binding.bind_cpu_input(mf.LOGITS_INDEX, np.array([-1], np.int64))
    binding.bind_output(mf.LOGITS, "cpu")
    binding.bind_output(mf.NEXT_TOKENS, "cpu")
    for names in (mf.past_names(num_layers), mf.present_names(num_layers)):
        for name, array in zip(names, cache):
            bind = binding.bind_input if names[0].startswith("past") else binding.bind_output
            bind(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
    session.run_with_iobinding(binding)
    logits, next_tokens = binding.get_outputs()[:2]  # in the order bound
    return logits.numpy(), next_tokens.numpy()


def ort_cpu_decoder_parity(path: Path, model, optimized, plain) -> list[OutputDiff]:
    """The fused ORT CPU decoder against transformers' forward (``CachedDecoder``): a 9-position
    prefill fed as embeddings, then 3 one-token steps fed as token ids (the graph gathers their
    embedding rows); logits, the cache slots each call wrote, and next_tokens against the argmax of
    the graph's own logits (mismatches counted)."""
    from eov_edge.model import CachedDecoder

    reference = CachedDecoder(model.language_model).eval()
    t = model.config.text_config
    layers, kv, hd = t.num_hidden_layers, t.num_key_value_heads, t.hidden_size // t.num_attention_heads
    table = model.get_input_embeddings().weight.detach().float().numpy()  # (V, D), as the export saves it
    g = torch.Generator().manual_seed(7)
    prompt, steps, atol = 9, 3, GRAPH_SPECS[mf.DECODER].atol
    step_ids = torch.randint(0, t.vocab_size, (1, steps), generator=g)
    embeds = torch.cat([torch.randn(1, prompt, t.hidden_size, generator=g), torch.from_numpy(table[step_ids[0]])[None]],
                       dim=1)  # (1, prompt + steps, D): what the reference is fed
    caches = {s: [np.zeros((1, kv, prompt + steps, hd), np.float32) for _ in range(2 * layers)]
              for s in ("optimized", "plain")}
    past = tuple(torch.zeros(1, kv, 0, hd) for _ in range(2 * layers))
    rows, start = [], 0
    for call, length in enumerate([prompt] + [1] * steps):
        end = start + length
        with torch.no_grad():
            logits, *presents = reference(embeds[:, start:end], torch.ones(1, end, dtype=torch.long),
                                          torch.arange(start, end)[None], past)
        if call == 0:  # the prompt as embeddings
            fed = (embeds[:, start:end].numpy(), np.zeros((1, 0), np.int64))
        else:  # a decode step as its token id
            fed = (np.zeros((1, 0, t.hidden_size), np.float32), step_ids[:, call - 1:call].numpy())
        got = {s: _run_shared_cache(session, *fed, table, np.array([end - 1]), end, caches[s], layers)
               for s, session in (("optimized", optimized), ("plain", plain))}
        case = "prefill seq=9" if call == 0 else f"decode past={start} (token id)"
        diff = np.abs(got["optimized"][0] - logits.numpy())
        rows.append(OutputDiff(mf.DECODER, case, mf.LOGITS, float(diff.max()), float(diff.mean()), atol,
                               float(np.abs(got["optimized"][0] - got["plain"][0]).max())))
        cache_diff = max(float(np.abs(c[:, :, :end] - p.numpy()).max()) for c, p in zip(caches["optimized"], presents))
        rows.append(OutputDiff(mf.DECODER, case, "present (shared cache)", cache_diff, cache_diff, atol,
                               max(float(np.abs(a - b).max()) for a, b in zip(caches["optimized"], caches["plain"]))))
        wrong = {s: float((got[s][1] != got[s][0].argmax(-1)).sum()) for s in got}
        rows.append(OutputDiff(mf.DECODER, case, f"{mf.NEXT_TOKENS} (mismatches with argmax)", wrong["optimized"],
                               wrong["optimized"], atol, wrong["plain"]))
        past, start = tuple(presents), end
    return rows


def graph_parity(directory: Path, model) -> list[OutputDiff]:
    import onnxruntime as ort

    from eov_edge.runtime.ort_runner import session_options

    fused = mf.load_manifest(directory, verify_hashes=False).decoder_kind == mf.ORT_CPU_DECODER
    rows = []
    for name, spec in GRAPH_SPECS.items():
        path = str(directory / spec.file)
        optimized_options = session_options()
        plain_options = session_options()
        plain_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        optimized = ort.InferenceSession(path, optimized_options, providers=["CPUExecutionProvider"])
        plain = ort.InferenceSession(path, plain_options, providers=["CPUExecutionProvider"])
        if name == mf.DECODER and fused:
            rows += ort_cpu_decoder_parity(directory / spec.file, model, optimized, plain)
            continue
        module = (spec.reference or spec.module)(model).eval()
        for k, shapes in enumerate(VALIDATION_CASES[name]):
            inputs = spec.inputs(model, shapes, torch.Generator().manual_seed(100 + k))
            with torch.no_grad():
                expected = module(*inputs)
            expected = expected if isinstance(expected, tuple) else (expected,)
            feed = {n: t.numpy() for n, t in zip(spec.input_names(model), _flatten(inputs))}
            got = optimized.run(None, feed)
            got_plain = plain.run(None, feed)
            fields = ("views",) if name != mf.DECODER else ("batch", "seq", "past")
            case = ", ".join(f"{k}={getattr(shapes, k)}" for k in fields)
            for out_name, e, g, gp in zip(spec.output_names(model), expected, got, got_plain):
                diff = np.abs(g - e.numpy())
                rows.append(OutputDiff(name, case, out_name, float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
                                       spec.atol, float(np.abs(g - gp).max(initial=0.0))))
    return rows


def diff_table(rows: list[OutputDiff]) -> str:
    lines = ["| graph | case | output | max abs | mean abs | tolerance | ORT optimizer max abs |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.graph} | {r.case} | {r.output} | {r.max_abs:.2e} | {r.mean_abs:.2e} | {r.atol:.0e} | "
              f"{r.ort_optimizer_max_abs:.2e} |" for r in rows]
    return "\n".join(lines)


def pipeline_parity(directory: Path, model, processor, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Greedy tokens of the device runtime (numpy + ORT, preallocated KV cache) against PyTorch
    generate(), one sample at a time and as one left-padded batch of all samples."""
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    pipeline = Pipeline.from_artifacts(directory)
    greedy = GenerationConfig(max_new_tokens=max_new_tokens)
    samples = calib_questions(model.config.image_size)
    results = []

    def compare(label: str, chosen) -> None:
        batch = processor([s for _, s in chosen], max_new_tokens=max_new_tokens)
        with torch.no_grad():
            reference = model.generate(**batch, max_new_tokens=max_new_tokens)
        ours, _ = pipeline.generate_ids({k: v.numpy() for k, v in batch.items()}, greedy)
        for row, (sample_id, _) in enumerate(chosen):
            a = processor.decode(reference[row].tolist()).token_ids
            b = processor.decode(ours[row].tolist()).token_ids
            results.append({"sample": sample_id, "mode": label, "identical": a == b, "pytorch": a, "onnx": b})

    for item in samples:
        compare("single", [item])
    compare("batch", samples)
    identical = sum(r["identical"] for r in results)
    return {"samples": len(samples), "comparisons": len(results), "identical": identical, "results": results}


def validate_artifacts(directory: Path, model, processor) -> dict:
    """Run both checks; raise :class:`ParityError` listing every failure, else return the summary."""
    rows = graph_parity(directory, model)
    pipeline = pipeline_parity(directory, model, processor)
    failures = [r for r in rows if not r.ok]
    mismatched = [r for r in pipeline["results"] if not r["identical"]]
    if failures or mismatched:
        message = ["exported graphs disagree with PyTorch:"]
        if failures:
            message.append(diff_table(failures))
        for r in mismatched:
            message.append(f"{r['sample']} ({r['mode']}): PyTorch {r['pytorch']} vs ONNX {r['onnx']}")
        raise ParityError("\n".join(message))
    logits = [r for r in rows if r.output == mf.LOGITS]
    return {
        "graphs": [asdict(r) for r in rows],
        "pipeline": pipeline,
        "summary": {
            "max_abs_logits": max(r.max_abs for r in logits),
            "max_abs_any": max(r.max_abs for r in rows),
            "token_identical": f"{pipeline['identical']}/{pipeline['comparisons']}",
            "calib_samples": pipeline["samples"],
        },
    }


def verify(artifacts: Path, checkpoint: Path, report: Path | None = None) -> dict:
    """``eov-export verify``: re-run both checks on existing artifacts; write a JSON report."""
    from eov_edge.model.processor import load_model

    mf.load_manifest(artifacts)  # missing or changed files fail here, before any comparison
    model, processor = load_model(checkpoint, None)
    try:
        summary = validate_artifacts(artifacts, model, processor)
        summary["ok"] = True
    except ParityError as err:
        summary = {"ok": False, "error": str(err)}
    if report is not None:
        write_json_atomic(report, summary)
    return summary
