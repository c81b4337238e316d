"""Two ONNX Runtime CPU kernel choices the export and the INT4 runtime make, measured.

1. ``SkipLayerNormalization`` (what ORT's transformer optimizer fuses residual + LayerNorm into)
   against ``Add`` + ``LayerNormalization`` (what ``split_skip_layer_norms`` turns it back into), on
   the residual shapes of the nano and small encoders and a decoder prompt.
2. The INT4 decoder (``ort-cpu-int4`` artifacts, ``MatMulNBits`` at accuracy_level 4) run by a
   default session and by one with ``mlas.qnbit.force_fp32`` (the runtime's prefill session), on a
   decode step and on prompts: token-for-token the same graph, only the kernel differs.

Each pair runs alternating in one process (sessions not spinning, so the idle one steals no core),
median of the rounds. Usage::

    python benchmarks/ort_cpu_kernels.py --int4-artifacts ARTIFACTS_INT4 --out benchmarks/results/ort_cpu_kernels.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def _session(model, config: dict[str, str] | None = None, threads: int = 2):
    """A CPU session as the runtime makes one outside its shared pool: its own non-spinning pool."""
    import onnxruntime as ort

    from eov_edge.runtime.ort_runner import session_options

    return ort.InferenceSession(model, session_options(threads, config), providers=["CPUExecutionProvider"])


def _alternate(calls: dict[str, callable], rounds: int, per_round: int) -> dict[str, float]:
    """Median ms per call of each callable, run alternating: ``rounds`` x ``per_round`` calls."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            times[name].append((time.perf_counter() - start) / per_round * 1000)
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def skip_layer_norm(shapes: list[tuple[int, int]], threads: int, rounds: int) -> list[dict]:
    from onnx import TensorProto, helper, numpy_helper

    rows = []
    for seq, width in shapes:
        rng = np.random.default_rng(0)
        weights = [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), n) for n in ("gamma", "beta")]
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, seq, width]) for n in ("x", "skip", "y", "sum")]
        graphs = {
            "SkipLayerNormalization": [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"],
                                                        ["y", "", "", "sum"], domain="com.microsoft", epsilon=1e-6)],
            "Add + LayerNormalization": [helper.make_node("Add", ["x", "skip"], ["sum"]),
                                         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"],
                                                          axis=-1, epsilon=1e-6)],
        }
        feed = {"x": rng.standard_normal((1, seq, width), dtype=np.float32),
                "skip": rng.standard_normal((1, seq, width), dtype=np.float32)}
        calls = {}
        for name, nodes in graphs.items():
            model = helper.make_model(helper.make_graph(nodes, "g", io[:2], io[2:], weights),
                                      opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
            session = _session(model.SerializeToString(), threads=threads)
            calls[name] = lambda s=session: s.run(None, feed)
        ms = _alternate(calls, rounds, 50)
        rows.append({"shape": [1, seq, width], "threads": threads, "ms": ms,
                     "fused_over_split": round(ms["SkipLayerNormalization"] / ms["Add + LayerNormalization"], 2)})
    return rows


def int4_kernels(artifacts: Path, prompt_lengths: list[int], threads: int, rounds: int) -> list[dict]:
    from eov_edge.core import manifest as mf

    manifest = mf.load_manifest(artifacts, verify_hashes=False)
    path = str(artifacts / manifest.graphs[mf.DECODER].file)
    sessions = {"accuracy_level 4 (int8 compute)": _session(path, threads=threads),
                "mlas.qnbit.force_fp32 (fp32 compute)": _session(path, {"mlas.qnbit.force_fp32": "1"}, threads)}
    width = manifest.model_config["text_config"]["hidden_size"]
    capacity = max(prompt_lengths) + 64
    rows = []
    for fed, past in [(1, max(prompt_lengths))] + [(m, 0) for m in prompt_lengths]:
        rng = np.random.default_rng(0)
        feed = {mf.INPUTS_EMBEDS: rng.standard_normal((1, fed, width), dtype=np.float32) * 0.05,
                mf.SEQLENS_K: np.array([past + fed - 1], np.int32),
                mf.TOTAL_SEQUENCE_LENGTH: np.array(past + fed, np.int32), mf.LOGITS_INDEX: np.array([-1], np.int64)}
        if any(t.name == mf.INPUT_IDS for t in manifest.graphs[mf.DECODER].inputs):  # fed as embeddings only
            feed[mf.INPUT_IDS] = np.zeros((1, 0), np.int64)
            feed[mf.EMBED_TABLE] = np.load(artifacts / manifest.embedding["file"])
        calls = {}
        for name, session in sessions.items():
            cache = [np.zeros((1, manifest.num_kv_heads, capacity, manifest.head_dim), np.float32)
                     for _ in mf.past_names(manifest.num_layers)]
            binding = session.io_binding()  # the runtime's way: the KV buffers bound as past and present
            for key, value in feed.items():
                binding.bind_cpu_input(key, value)
            for past_name, present_name, buffer in zip(mf.past_names(manifest.num_layers),
                                                       mf.present_names(manifest.num_layers), cache):
                shape = list(buffer.shape)
                binding.bind_input(past_name, "cpu", 0, np.float32, shape, buffer.ctypes.data)
                binding.bind_output(present_name, "cpu", 0, np.float32, shape, buffer.ctypes.data)
            binding.bind_output(mf.LOGITS, "cpu")
            if mf.EMBED_TABLE in feed:
                binding.bind_output(mf.NEXT_TOKENS, "cpu")
            # bound by address: the lambda keeps the KV buffers alive for as long as it may run
            calls[name] = lambda s=session, b=binding, c=cache: s.run_with_iobinding(b)
        ms = _alternate(calls, rounds, 10 if fed == 1 else 2)
        rows.append({"tokens_fed": fed, "cached": past, "threads": threads, "ms": ms})
    return rows


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--int4-artifacts", type=Path, default=None, help="ort-cpu-int4 artifacts (fused decoder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = {"onnxruntime": onnxruntime.__version__, "threads": args.threads, "rounds": args.rounds,
              # nano encoder (196 tokens x 192), small encoder (256 x 384), a 90-token small decoder prompt
              "skip_layer_norm": skip_layer_norm([(196, 192), (256, 384), (90, 768)], args.threads, args.rounds)}
    if args.int4_artifacts:
        report["int4_decoder"] = int4_kernels(args.int4_artifacts, [90, 200], args.threads, args.rounds)
        report["int4_artifacts"] = str(args.int4_artifacts)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
