"""eov-export onnx: graph contract, parity with PyTorch, external data, atomic failure, bad input."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from eov_edge.cli import export_main as export_cli
from eov_edge.core import manifest as mf
from eov_edge.export import onnx_export
from eov_edge.export.onnx_export import ExportError, export_onnx
from eov_edge.export.validate import VALIDATION_CASES, ParityError, validate_artifacts
from eov_edge.model.processor import load_model
from eov_edge.model.weights import weights_sha256

pytestmark = pytest.mark.slow

# Encoder (14 MB) and decoder (16 MB) go over this, the projector (3 MB) does not: both paths.
SMALL_THRESHOLD = 10_000_000


def wide_init(model):
    """Default init makes greedy decoding repeat one token; wider weights answer input by input."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope="module")
def nano():
    model, processor = load_model(None, "nano", seed=0)
    return wide_init(model), processor


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, nano):
    out = tmp_path_factory.mktemp("export") / "nano"
    manifest = export_onnx(out, model_and_processor=nano, external_threshold=SMALL_THRESHOLD, preset="nano")
    return out, manifest


def test_graph_contract(artifacts, nano):
    out, manifest = artifacts
    model, _ = nano
    c = model.config
    loaded = mf.load_manifest(out)
    assert set(loaded.graphs) == {"encoder", "projector", "decoder"}
    enc = loaded.graphs["encoder"]
    assert [(t.name, t.dtype) for t in enc.inputs] == [("pixel_values", "float32"), ("modality_ids", "int64")]
    assert enc.inputs[0].shape[1:] == [16, c.image_size, c.image_size] and isinstance(enc.inputs[0].shape[0], str)
    assert enc.outputs[0].shape[1:] == [c.grid_size**2, c.multi_level_dim]
    proj = loaded.graphs["projector"]
    assert proj.outputs[0].name == "image_embeds"
    assert proj.outputs[0].shape[1:] == [c.image_tokens_per_view, c.text_config.hidden_size]
    dec = loaded.graphs["decoder"]
    layers = c.text_config.num_hidden_layers
    assert [t.name for t in dec.inputs] == ["inputs_embeds", "attention_mask", "position_ids"] + mf.past_names(layers)
    assert [t.name for t in dec.outputs] == ["logits"] + mf.present_names(layers)
    assert dec.outputs[0].shape[1:] == [1, c.text_config.vocab_size]  # last position only
    for graph in loaded.graphs.values():
        assert onnx.load(str(out / graph.file), load_external_data=False).opset_import[0].version >= 18
    table = np.load(out / mf.EMBEDDING_FILE)
    assert np.array_equal(table, model.get_input_embeddings().weight.detach().numpy())
    assert loaded.produced_by["torch"].startswith("2.13") and loaded.band_table["canvas_version"] == 1
    # the weights' hash ties the artifacts to their model (eov-bench refuses artifacts of another one)
    assert loaded.produced_by["weights_sha256"] == weights_sha256(model)
    weight = next(model.parameters())
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[0] += 1.0
    try:
        assert weights_sha256(model) != loaded.produced_by["weights_sha256"]
    finally:
        with torch.no_grad():
            weight.copy_(kept)


def test_external_data_for_large_graphs(artifacts):
    out, manifest = artifacts
    assert manifest.graphs["decoder"].external_data == "decoder.onnx.data"
    assert manifest.graphs["encoder"].external_data == "encoder.onnx.data"
    assert manifest.graphs["projector"].external_data is None
    assert (out / "decoder.onnx").stat().st_size < 1_000_000  # weights live in the .data file


def test_the_fused_cpu_decoder_streams_its_weights_to_external_data(tmp_path, nano):
    """The ort-cpu decoder above the threshold: each weight written to decoder.onnx.data as it comes
    (offsets back to back), and the validated export gives PyTorch's tokens from it."""
    out = tmp_path / "fused"
    manifest = export_onnx(out, model_and_processor=nano, external_threshold=SMALL_THRESHOLD, preset="nano",
                           decoder="ort-cpu")
    assert manifest.decoder_kind == "ort-cpu" and manifest.graphs["decoder"].external_data == "decoder.onnx.data"
    graph = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph
    placed = sorted((int(d["offset"]), int(d["length"])) for d in
                    ({e.key: e.value for e in t.external_data} for t in graph.initializer))
    assert len(placed) == len(graph.initializer) and placed[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(placed, placed[1:]))
    assert placed[-1][0] + placed[-1][1] == (out / "decoder.onnx.data").stat().st_size
    pipeline = manifest.validation["pipeline"]
    assert pipeline["comparisons"] == 20 and pipeline["identical"] == pipeline["comparisons"]
    # every file as readable as its graph (the fused encoder's data once came out 0600)
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}
    assert modes["encoder.onnx.data"] == modes["encoder.onnx"] == modes["decoder.onnx.data"], modes


def test_every_graph_matches_pytorch_including_prefill_and_decode(artifacts):
    _, manifest = artifacts
    rows = manifest.validation["graphs"]
    assert all(r["max_abs"] <= 1e-4 and r["ort_optimizer_max_abs"] <= 1e-4 for r in rows), rows
    cases = {r["case"] for r in rows if r["graph"] == "decoder"}
    assert len(cases) == len(VALIDATION_CASES["decoder"])
    assert any("past=0" in c and "batch=2" in c for c in cases)  # prefill, left-padded batch
    assert any("seq=1" in c and "past=11" in c for c in cases)  # one-token decode
    assert manifest.validation["summary"]["max_abs_logits"] <= 1e-4


def test_greedy_tokens_identical_on_every_calib_sample(artifacts):
    _, manifest = artifacts
    pipeline = manifest.validation["pipeline"]
    assert pipeline["samples"] == 10 and pipeline["comparisons"] == 20
    assert pipeline["identical"] == pipeline["comparisons"]
    # the comparison is not trivial: answers differ between samples and are several tokens long
    answers = {tuple(r["pytorch"]) for r in pipeline["results"]}
    assert len(answers) >= 3 and max(len(a) for a in answers) >= 8


def test_verify_reruns_and_catches_tampering(artifacts, nano, tmp_path):
    out, _ = artifacts
    model, processor = nano
    assert validate_artifacts(out, model, processor)["summary"]["token_identical"] == "20/20"
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    graph = onnx.load(str(copy / "projector.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # fc1's weight
    values = onnx.numpy_helper.to_array(weight).copy() * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save_model(graph, str(copy / "projector.onnx"))
    with pytest.raises(mf.ManifestError, match="sha256 differs"):
        mf.load_manifest(copy)
    # with the hash updated the parity check itself must catch the change
    manifest = json.loads((copy / mf.MANIFEST_FILE).read_text())
    manifest["graphs"]["projector"]["sha256"] = mf.sha256_file(copy / "projector.onnx")
    (copy / mf.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ParityError, match="projector"):
        validate_artifacts(copy, model, processor)


def test_failed_export_leaves_nothing_behind(tmp_path, nano, monkeypatch):
    calls = []
    real = onnx_export.export_graph

    def fail_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise RuntimeError("simulated crash while writing the projector")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_graph", fail_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(tmp_path / "out", model_and_processor=nano, preset="nano")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_bad_checkpoints(tmp_path, artifacts):
    out, _ = artifacts
    with pytest.raises(ExportError, match="--overwrite"):
        export_onnx(out, preset="nano")
    runner = CliRunner()
    result = runner.invoke(export_cli, ["onnx", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "checkpoint folder not found" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = runner.invoke(export_cli, ["onnx", "--checkpoint", str(tmp_path / "other"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "'bert' checkpoint" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_help():
    runner = CliRunner()
    for args in (["--help"], ["onnx", "--help"], ["verify", "--help"]):
        result = runner.invoke(export_cli, args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_graphs_use_only_ops_tensorrt_imports(artifacts):
    from eov_edge.export.tensorrt_ops import unsupported_ops

    out, manifest = artifacts
    for graph in manifest.graphs.values():
        assert not unsupported_ops(onnx.load(str(out / graph.file), load_external_data=False)), graph.file
    fake = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Unique", ["x"], ["y"]), onnx.helper.make_node("Relu", ["y"], ["z"])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [3])]))
    assert dict(unsupported_ops(fake)) == {"Unique": 1}


def test_verify_cli_writes_a_report(artifacts, nano, tmp_path):
    from eov_edge.model.processor import save_checkpoint

    out, _ = artifacts
    model, processor = nano
    save_checkpoint(model, processor, tmp_path / "ckpt")
    report = tmp_path / "report.json"
    result = CliRunner().invoke(export_cli, ["verify", "--artifacts", str(out), "--checkpoint", str(tmp_path / "ckpt"),
                                             "--report", str(report)])
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["ok"] and summary["summary"]["token_identical"] == "20/20"
    # a checkpoint with other weights fails the check, with the report saying why
    original = model.projector.fc2.bias.detach().clone()
    with torch.no_grad():
        model.projector.fc2.bias.add_(1.0)
        save_checkpoint(model, processor, tmp_path / "other")
        model.projector.fc2.bias.copy_(original)  # the module fixture is shared: restore exactly
    result = CliRunner().invoke(export_cli, ["verify", "--artifacts", str(out), "--checkpoint", str(tmp_path / "other"),
                                             "--report", str(report)])
    assert result.exit_code != 0 and "parity check failed" in result.output
    assert not json.loads(report.read_text())["ok"]


def test_not_enough_disk_is_refused_before_writing(tmp_path, nano, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ExportError, match="MiB free"):
        export_onnx(tmp_path / "out", model_and_processor=nano, preset="nano")
    assert list(tmp_path.iterdir()) == []


def test_conv_stem_exports_with_parity_and_tensorrt_ops(tmp_path):
    """vision_stem="conv": the encoder graph carries the stem's convolutions (BatchNorm with its
    running statistics) and still matches PyTorch, graph by graph and token for token."""
    from eov_edge.core.tokenizer import TextTokenizer
    from eov_edge.export.tensorrt_ops import unsupported_ops
    from eov_edge.model import (
        EarthOneVisionConfig,
        EarthOneVisionForConditionalGeneration,
    )
    from eov_edge.model.processor import EarthOneVisionProcessor

    torch.manual_seed(0)
    config = EarthOneVisionConfig.from_preset("nano", vision_stem="conv")
    model = wide_init(EarthOneVisionForConditionalGeneration._from_config(config, attn_implementation="eager").eval())
    with torch.no_grad():
        for module in model.vision_encoder.embeddings.patch_embedding:
            if isinstance(module, torch.nn.BatchNorm2d):  # as after training: not the identity
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    processor = EarthOneVisionProcessor(TextTokenizer.from_file(), config)
    manifest = export_onnx(tmp_path / "conv", model_and_processor=(model, processor), preset="nano")
    assert manifest.model_config["vision_stem"] == "conv"
    assert manifest.validation["summary"]["max_abs_logits"] <= 1e-4
    assert all(r["max_abs"] <= 1e-4 for r in manifest.validation["graphs"]), manifest.validation["graphs"]
    pipeline = manifest.validation["pipeline"]
    assert pipeline["identical"] == pipeline["comparisons"] == 20
    encoder = onnx.load(str(tmp_path / "conv" / manifest.graphs["encoder"].file), load_external_data=False)
    assert sum(n.op_type == "Conv" for n in encoder.graph.node) == 4
    assert not unsupported_ops(encoder)


@pytest.mark.parametrize("with_bias", [False, True])
def test_split_skip_layer_norms_computes_what_the_fused_op_computes(with_bias):
    """The fused encoder's SkipLayerNormalizations become Add (+ bias Add) + LayerNormalization:
    the normalized output and the residual sum equal ONNX Runtime's fused kernel's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width = 48
    weights = {name: rng.standard_normal(width).astype(np.float32) for name in ("gamma", "beta", "bias")}
    inputs = ["x", "skip", "gamma", "beta"] + (["bias"] if with_bias else [])
    node = helper.make_node("SkipLayerNormalization", inputs, ["y", "", "", "sum"], name="layer0/norm",
                            domain="com.microsoft", epsilon=1e-6)
    scale = helper.make_node("Mul", ["sum", "two"], ["sum_x2"])  # a consumer of the residual sum
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, width]) for n in ("x", "skip", "y", "sum_x2")]
    graph = helper.make_graph([node, scale], "g", io[:2], io[2:],
                              [numpy_helper.from_array(v, n) for n, v in weights.items() if n in inputs]
                              + [numpy_helper.from_array(np.float32(2.0), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    feed = {"x": rng.standard_normal((2, 5, width), dtype=np.float32),
            "skip": rng.standard_normal((2, 5, width), dtype=np.float32)}

    def run(m):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the ops as written
        return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)

    fused = run(model)
    assert onnx_export.split_skip_layer_norms(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Add"] * (1 + with_bias) + ["LayerNormalization", "Mul"]
    onnx.checker.check_model(model)
    split = run(model)
    for a, b in zip(fused, split):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    total = feed["x"] + feed["skip"] + (weights["bias"] if with_bias else 0)
    np.testing.assert_allclose(split[1], 2 * total, atol=1e-5)


def test_split_skip_layer_norms_leaves_a_node_whose_statistics_are_read():
    from onnx import helper

    used = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma"], ["y", "mean", "", "sum"],
                            domain="com.microsoft")
    plain = helper.make_node("SkipLayerNormalization", ["y", "skip", "gamma"], ["z"], domain="com.microsoft")
    graph = helper.make_graph([used, plain], "g", [], [])
    assert onnx_export.split_skip_layer_norms(graph) == 1
    assert [n.op_type for n in graph.node] == ["SkipLayerNormalization", "Add", "LayerNormalization"]
    assert graph.node[2].output[0] == "z" and graph.node[2].input[0] == graph.node[1].output[0]
