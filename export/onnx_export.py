"""``eov-export onnx``: encoder, projector and decoder graphs, embedding table, tokenizer, manifest.

Writes into a temporary folder beside ``out`` and renames it into place only after every graph has
been written, checked (onnx checker, shape inference) and validated against PyTorch; a failure
leaves no half-written artifacts.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from eov_edge import __version__
from eov_edge.core import bands
from eov_edge.core import manifest as mf
from eov_edge.core.errors import EOVError
from eov_edge.core.paths import staged_folder
from eov_edge.core.provenance import git_commit
from eov_edge.core.slis import SLIS_VERSION
from eov_edge.core.tokenizer import TOKENIZER_FILE
from eov_edge.export.specs import GRAPH_SPECS, Shapes
from eov_edge.export.tensorrt_ops import unsupported_ops
from eov_edge.model.processor import load_model
from eov_edge.model.weights import weights_sha256

# Weights over this go to "<graph>.data". Protobuf cannot hold more than 2 GiB in one message, and
# below that the exporter serializes a graph in memory (2-3 copies of its weights at once: a 1.4 GB
# graph peaked at 5.2 GB over the model), where external data streams tensor by tensor.
EXTERNAL_DATA_THRESHOLD = 512 * 2**20
DEFAULT_OPSET = 18


class ExportError(EOVError, RuntimeError):
    """The export could not be written or its output is wrong."""


def _tensor_specs(values) -> list[mf.TensorSpec]:
    import onnx

    out = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        out.append(mf.TensorSpec(value.name, dtype, shape))
    return out


@contextlib.contextmanager
def _quiet_registry():
    """Silence the exporter's op registry while it builds: it logs one "torchvision is not installed"
    line per torchvision op on every export, about ops this model never uses."""
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry_logger.setLevel(level)


def _release_rewriter_state() -> None:
    """Drop the exported graph the exporter's optimizer keeps alive after it is done.

    onnxscript's pattern matchers (``SimplePatternMatcher``, one per module-level rewrite rule) keep
    the last graph they matched in ``_graph`` and ``_match``, and through them every initializer of it:
    the decoder module's weight copy (6 GB for eov-2b) stayed in memory until the next export, and the
    2B export ran out of memory on a 24 GB machine. Cleared here after every graph."""
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript layout: nothing of ours to clear
        return
    for obj in gc.get_objects():
        # the class's MRO, not isinstance: an ABC instance check on every live object also asks
        # torch's deprecated aliases (torch.distributed.reduce_op), which warn each time
        if SimplePatternMatcher in type(obj).__mro__:
            for attribute in ("_graph", "_match", "_current_node", "_tracer"):
                if attribute in vars(obj):
                    setattr(obj, attribute, None)
    gc.collect()


def export_graph(model, name: str, directory: Path, opset: int, external_threshold: int) -> mf.GraphEntry:
    """Export one graph to ``directory``; external data when the weights exceed the threshold."""
    import onnx

    spec = GRAPH_SPECS[name]
    module = spec.module(model).eval()
    inputs = spec.inputs(model, Shapes(), torch.Generator().manual_seed(0))
    path = directory / spec.file
    with warnings.catch_warnings(), _quiet_registry(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, inputs, dynamo=True, dynamic_shapes=spec.dynamic_shapes(model),
            input_names=spec.input_names(model), output_names=spec.output_names(model),
            opset_version=opset, optimize=True, verbose=False,
        )
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > external_threshold
    # ONNXProgram.save streams initializers to one "<file>.data" file: no 2 GB protobuf in memory.
    program.save(str(path), external_data=external)
    del program, module
    _release_rewriter_state()
    # The exporter may also choose external data on its own (seen for a 1.7 GB encoder): trust the
    # files, not the request, so the manifest lists everything the device must copy.
    data_file = spec.file + ".data" if (directory / (spec.file + ".data")).is_file() else None
    if external and data_file is None:
        raise ExportError(f"expected the external data of {spec.file} in {spec.file}.data; the exporter wrote "
                          f"{sorted(p.name for p in directory.iterdir())}")
    onnx.checker.check_model(str(path), full_check=True)  # path form: works with external data
    loaded = onnx.load(str(path), load_external_data=False)
    unsupported = unsupported_ops(loaded)
    if unsupported:
        raise ExportError(
            f"{spec.file} uses ops TensorRT's ONNX parser cannot import: {dict(unsupported)}; change the model "
            "code that produces them (the exporter is not patched)"
        )
    return graph_entry(directory, spec.file, opset, loaded)


def graph_entry(directory: Path, file: str, opset: int, loaded=None) -> mf.GraphEntry:
    """The manifest entry of a graph file as written: hashes, and the I/O read back from the graph
    (``loaded``: the graph already loaded without its external data, to skip a second read)."""
    import onnx

    if loaded is None:
        loaded = onnx.load(str(directory / file), load_external_data=False)
    data_file = file + ".data" if (directory / (file + ".data")).is_file() else None
    return mf.GraphEntry(
        file=file, sha256=mf.sha256_file(directory / file),
        inputs=_tensor_specs(loaded.graph.input), outputs=_tensor_specs(loaded.graph.output),
        external_data=data_file,
        external_data_sha256=mf.sha256_file(directory / data_file) if data_file else None, opset=opset,
    )


def fuse_decoder_for_ort_cpu(directory: Path, manifest: mf.Manifest, language_model, external_threshold: int
                             ) -> None:
    """Replace ``directory``'s portable decoder.onnx with ONNX Runtime's fused decoder (same weights)
    and its entry in ``manifest``."""
    from eov_edge.export.ort_decoder import build_ort_decoder, export_weights

    file = mf.GRAPH_FILES[mf.DECODER]
    build_ort_decoder(export_weights(language_model), directory / file, manifest,  # staging: replaced in place
                      external_threshold, embedding_dtype=manifest.embedding["dtype"])
    manifest.graphs[mf.DECODER] = graph_entry(directory, file, manifest.graphs[mf.DECODER].opset)
    manifest.decoder_kind = mf.ORT_CPU_DECODER


def fuse_encoder_for_ort_cpu(directory: Path, manifest: mf.Manifest, vision_config, external_threshold: int
                             ) -> None:
    """Replace ``directory``'s portable encoder.onnx with ONNX Runtime's fused ViT graph (same
    weights) and its entry in ``manifest``.

    ONNX Runtime's transformer optimizer, CLIP fusions: per layer one ``Attention`` op (Q/K/V packed
    into one MatMul, softmax and head reshapes inside the kernel), ``FastGelu`` for the tanh GELU
    (exported as Pow, Tanh and five Mul/Add passes over the MLP activations) and
    ``SkipLayerNormalization`` for residual + LayerNorm, which ``split_skip_layer_norms`` then turns
    back into ``Add`` + ``LayerNormalization`` (faster on ONNX Runtime's CPU kernels).
    ``ort-cpu-int8`` then leaves the packed Q/K/V weights in float (it quantizes MatMuls). The
    optimizer matches patterns; if it does not fuse every layer's attention (another exporter or
    transformers version), the portable encoder stays, with a warning.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    layers, heads = vision_config.num_hidden_layers, vision_config.num_attention_heads
    path = directory / mf.GRAPH_FILES[mf.ENCODER]
    graph = onnx.load(str(path))  # with its external data, if any
    _feature_norms_last(graph.graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(graph, model_type="clip", num_heads=heads, hidden_size=vision_config.hidden_size,
                                   opt_level=0)
    fused = optimized.get_fused_operator_statistics()
    if fused.get("Attention", 0) != layers:
        warnings.warn(f"ONNX Runtime's optimizer fused {fused.get('Attention', 0)} of the encoder's {layers} "
                      "attention layers; the encoder stays portable (still correct, slower on CPU)")
        return
    split_skip_layer_norms(optimized.model.graph)
    data = directory / (path.name + ".data")
    external = data.is_file() or sum(t.ByteSize() for t in optimized.model.graph.initializer) > external_threshold
    data.unlink(missing_ok=True)  # loaded into memory above; written again below if needed
    optimized.save_model_to_file(str(path), use_external_data_format=external)
    if data.is_file():  # the optimizer writes it through a private temporary file (mode 0600)
        data.chmod(path.stat().st_mode & 0o777)
    manifest.graphs[mf.ENCODER] = graph_entry(directory, path.name, manifest.graphs[mf.ENCODER].opset)


def split_skip_layer_norms(graph) -> int:
    """Replace each ``SkipLayerNormalization`` of ``graph`` by ``Add`` (plus one for its bias input, if
    any) and ``LayerNormalization``, in place; returns how many. Same function: the residual sum
    (output 3) is the ``Add``'s output, the normalized output keeps its name.

    Why: ONNX Runtime's CPU kernel for ``SkipLayerNormalization`` with a beta is several times slower
    than the two standard ops it fuses (onnxruntime 1.32, 2 cores, one residual + norm at the nano
    encoder's (1, 196, 192): 0.160 against 0.064 ms, small's (1, 256, 384): 0.388 against 0.097;
    benchmarks/ort_cpu_kernels.py). The nano encoder runs 12 of them: 7% of its time. ONNX
    Runtime's own session-level fusion puts back at most the last one (whose sum nothing else reads).
    A node whose mean or inverse-deviation output is used (training graphs) is left as it is.
    """
    from onnx import helper

    nodes, count = [], 0
    for node in graph.node:
        statistics_used = any(name for name in node.output[1:3])
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft" or statistics_used:
            nodes.append(node)
            continue
        count += 1
        x, skip, gamma = node.input[0], node.input[1], node.input[2]
        beta = node.input[3] if len(node.input) > 3 else ""
        bias = node.input[4] if len(node.input) > 4 else ""
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)  # the contrib op's default
        total = node.output[3] if len(node.output) > 3 and node.output[3] else f"{node.name}/sum"
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{node.name}/biased"], name=f"{node.name}/add_bias"))
            x = f"{node.name}/biased"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{node.name}/add"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma, *([beta] if beta else [])],
                                      [node.output[0]], name=f"{node.name}/norm", axis=-1, epsilon=epsilon))
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _feature_norms_last(graph) -> None:
    """Move the LayerNorms of the multi-level features (FGVLA: read by the output Concat only) to just
    before that Concat, in place. The exporter places each right after its layer's residual Add,
    before the next layer's own LayerNorm on the same Add; ONNX Runtime's CLIP attention fusion takes
    the Add's first LayerNorm child as the attention input and so skipped every layer after a
    feature level (nano: 3 of 6 fused). Still a topological order: these nodes feed only the Concat."""
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    concat = next((n for n in graph.node if n.op_type == "Concat" and n.output[0] == graph.output[0].name), None)
    if concat is None:
        return
    late = [n for n in graph.node
            if n.op_type == "LayerNormalization" and consumers.get(n.output[0]) == [concat.name]]
    moved = {id(n) for n in late}
    nodes = [n for n in graph.node if id(n) not in moved]
    at = nodes.index(concat)
    ordered = nodes[:at] + late + nodes[at:]
    del graph.node[:]
    graph.node.extend(ordered)


def build_manifest(model, processor, graphs: dict[str, mf.GraphEntry], directory: Path, source: str) -> mf.Manifest:
    import onnx
    import onnxruntime
    import transformers

    c = model.config
    t = c.text_config
    tokenizer = processor.tokenizer
    return mf.Manifest(
        format_version=mf.MANIFEST_FORMAT_VERSION,
        graphs=graphs,
        embedding={"file": mf.EMBEDDING_FILE, "sha256": mf.sha256_file(directory / mf.EMBEDDING_FILE),
                   "shape": [t.vocab_size, t.hidden_size], "dtype": "float32"},
        model_config=c.to_dict(),
        tokenizer={"file": TOKENIZER_FILE, "sha256": mf.sha256_file(directory / TOKENIZER_FILE)},
        special_tokens={"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id,
                        "image": tokenizer.image_token_id, "user": tokenizer.user_token_id,
                        "assistant": tokenizer.assistant_token_id},
        band_table=bands.band_table(),
        image_size=c.image_size,
        image_tokens_per_view=c.image_tokens_per_view,
        max_context=c.max_context,
        num_layers=t.num_hidden_layers,
        num_kv_heads=t.num_key_value_heads,
        head_dim=t.hidden_size // t.num_attention_heads,
        slis_version=SLIS_VERSION,
        produced_by={
            "eov_edge": __version__, "git_commit": git_commit(), "source": source,
            "weights_sha256": weights_sha256(model),
            "torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
        },
    )


def export_onnx(
    out: Path,
    checkpoint: Path | None = None,
    preset: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    validate: bool = True,
    external_threshold: int = EXTERNAL_DATA_THRESHOLD,
    seed: int = 0,
    model_and_processor=None,
    decoder: str = mf.PORTABLE_DECODER,
) -> mf.Manifest:
    """Export, validate and atomically publish the artifacts folder ``out``.

    decoder: "portable" (standard ops: ONNX Runtime and TensorRT) or "ort-cpu" (ONNX Runtime's
        fused contrib ops, built from the portable graphs' weights: the fastest on CPU; the decoder
        rebuilt as ONNX Runtime GenAI lays it out, the encoder through ONNX Runtime's optimizer).
    """
    out = Path(out)
    if decoder not in mf.DECODER_KINDS:
        raise ExportError(f"--decoder must be one of {', '.join(mf.DECODER_KINDS)}, got {decoder!r}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if opset < 18:
        raise ExportError(f"--opset must be >= 18 (got {opset})")
    model, processor = model_and_processor or load_model(checkpoint, preset, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    needed = 3 * sum(p.numel() * 4 for p in model.parameters()) + (64 << 20)
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise ExportError(f"{out.parent}: {free >> 20} MiB free, the export needs about {needed >> 20} MiB")
    with staged_folder(out) as staging:
        graphs = {name: export_graph(model, name, staging, opset, external_threshold) for name in GRAPH_SPECS}
        table = model.get_input_embeddings().weight.detach().float().numpy()
        np.save(staging / mf.EMBEDDING_FILE, table)
        processor.tokenizer.save(staging / TOKENIZER_FILE)
        source = str(checkpoint) if checkpoint else f"preset {preset}, random init, seed {seed}"
        manifest = build_manifest(model, processor, graphs, staging, source)
        if decoder == mf.ORT_CPU_DECODER:
            fuse_decoder_for_ort_cpu(staging, manifest, model.language_model, external_threshold)
            fuse_encoder_for_ort_cpu(staging, manifest, model.config.vision_config, external_threshold)
        listed = {mf.MANIFEST_FILE, mf.EMBEDDING_FILE, TOKENIZER_FILE}
        entries = manifest.graphs.values()
        listed |= {g.file for g in entries} | {g.external_data for g in entries if g.external_data}
        unlisted = sorted(p.name for p in staging.iterdir() if p.name not in listed)
        if unlisted:
            raise ExportError(f"the export wrote files the manifest does not list: {unlisted}")
        (staging / mf.MANIFEST_FILE).write_text(manifest.to_json())
        if validate:
            from eov_edge.export.validate import validate_artifacts

            manifest.validation = validate_artifacts(staging, model, processor)
            (staging / mf.MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def manifest_summary(manifest: mf.Manifest) -> str:
    lines = [f"{name}: {entry.file} ({', '.join(i.name for i in entry.inputs[:3])}"
             f"{', ...' if len(entry.inputs) > 3 else ''})" for name, entry in manifest.graphs.items()]
    return "\n".join(lines) + "\n" + json.dumps(manifest.validation.get("summary", {}), indent=1)


__all__ = ["ExportError", "export_onnx"]
