"""The reference model from pretrained components: exact decoder logits, SigLIP's features on a photo."""

import numpy as np
import pytest
import torch

from eov_edge.bench.components import save_qwen2, save_siglip
from eov_edge.core.bands import get_band_set, to_canvas
from eov_edge.core.errors import CheckpointError, ConfigError
from eov_edge.core.prompt import SPECIAL_TOKENS
from eov_edge.training.pretrained import decoder_tokenizer, from_components

K = len(SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    return save_siglip(root / "siglip"), save_qwen2(root / "qwen2")


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_logits_on_text_equal_qwen2s_own_k_columns_later(tmp_path, tie):
    from transformers import Qwen2ForCausalLM

    decoder = save_qwen2(tmp_path / "qwen2", tie=tie)
    model, processor = from_components("nano", decoder_dir=decoder)
    reference = Qwen2ForCausalLM.from_pretrained(decoder, dtype=torch.float32).eval()
    original = decoder_tokenizer(decoder)
    text = "Detect all ship. A river crossing a forest<|endoftext|> 12 cars"
    ids = original.encode(text, add_special_tokens=False).ids
    ours = processor.tokenizer.encode(text)
    assert ours == [i + K for i in ids]
    tokens = original.get_vocab_size(with_added_tokens=True)
    assert model.config.text_config.vocab_size == K + tokens  # the padding rows dropped
    with torch.no_grad():
        want = reference(input_ids=torch.tensor([ids])).logits[..., :tokens]
        got = model.eval().language_model(input_ids=torch.tensor([ours])).logits
    assert torch.equal(got[..., K:], want)
    assert processor.tokenizer.decode(ours) == original.decode(ids, skip_special_tokens=False)


def test_new_token_rows_start_near_the_mean_and_distinct(components):
    _, decoder = components
    model, _ = from_components("nano", decoder_dir=decoder)
    rows = model.get_input_embeddings().weight.detach()  # (K + T, D)
    new, old = rows[:K], rows[K:]
    spread = (new - old.mean(0)) / old.std(0)  # in the old rows' per-dimension std
    assert 0.005 < spread.std() < 0.02 and spread.abs().max() < 0.1
    assert torch.unique(new, dim=0).shape[0] == K


@pytest.mark.parametrize("whole_siglip", [False, True])
def test_vision_features_on_a_photo_equal_siglips(tmp_path, whole_siglip):
    from transformers import SiglipModel, SiglipVisionModel

    vision = save_siglip(tmp_path / "siglip", whole_siglip=whole_siglip)
    model, _ = from_components("nano", vision_dir=vision)
    assert model.config.image_size == 64 and model.config.vision_stem == "patch"
    assert model.config.feature_layers == [1, 2, 3, 4]
    reference = (SiglipModel if whole_siglip else SiglipVisionModel).from_pretrained(vision, dtype=torch.float32)
    reference = (reference.vision_model if whole_siglip else reference).eval()
    photo = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64)).astype(np.uint8)
    canvas, _ = to_canvas(photo, np.ones((64, 64), bool), get_band_set("rgb8"))
    siglip_pixels = (torch.from_numpy(photo).float() / 255 - 0.5) / 0.5  # SiglipImageProcessor
    with torch.no_grad():
        ours = model.eval().vision_encoder(torch.from_numpy(canvas)[None], torch.tensor([0]))  # (1, N, 4*D)
        out = reference(pixel_values=siglip_pixels[None], output_hidden_states=True)
    width = 64
    taps = ours.split(width, dim=-1)
    for depth in (1, 2, 3):
        want = torch.nn.functional.layer_norm(out.hidden_states[depth], (width,), eps=1e-6)
        assert torch.allclose(taps[depth - 1], want, atol=2e-4), depth
    torch.testing.assert_close(taps[3], out.last_hidden_state, atol=2e-4, rtol=1e-4)


def test_a_thermal_frame_reaches_the_pretrained_tower_as_a_grey_photo(components):
    vision, _ = components
    model, _ = from_components("nano", vision_dir=vision)
    weight = model.vision_encoder.embeddings.patch_embedding.weight  # (D, 16, p, p)
    rgb = weight[:, [3, 2, 1]]
    assert torch.count_nonzero(weight[:, 15]) and torch.count_nonzero(weight[:, 13])
    assert not torch.count_nonzero(weight[:, 7])  # NIR learns in the imaging-physics stage
    assert torch.all((rgb != 0).any(dim=(0, 2, 3)))


def test_the_two_components_together_make_a_model_that_generates(components):
    vision, decoder = components
    model, processor = from_components("nano", vision_dir=vision, decoder_dir=decoder)
    from eov_edge.core.inputs import Sample
    from eov_edge.core.raster import View

    photo = np.random.default_rng(1).integers(0, 256, size=(3, 64, 64)).astype(np.uint8)
    canvas, present = to_canvas(photo, np.ones((64, 64), bool), get_band_set("rgb8"))
    view = View(canvas, np.ones((64, 64), bool), present, "rgb8", "optical", ("photo",), (64, 64))
    answers = processor.answer(model.eval(), [Sample(views=[view], instruction="Describe the image.")],
                               max_new_tokens=4)
    assert len(answers[0].token_ids) <= 4


def test_unfit_folders_are_refused_with_what_to_give(tmp_path, components):
    vision, decoder = components
    with pytest.raises(ConfigError, match="give a Qwen2"):
        from_components("nano", decoder_dir=vision)
    with pytest.raises(ConfigError, match="SigLIP"):
        from_components("nano", vision_dir=decoder)
    with pytest.raises(CheckpointError, match="folder not found"):
        from_components("nano", vision_dir=tmp_path / "nope")
    odd = save_siglip(tmp_path / "odd", image_size=80, patch_size=16)  # 5x5 grid
    with pytest.raises(ConfigError, match="2x2 nor 3x3"):
        from_components("nano", vision_dir=odd)


@pytest.mark.slow
def test_exported_onnx_of_a_model_from_components_gives_pytorchs_tokens(tmp_path, components):
    from eov_edge.core.inputs import Sample
    from eov_edge.core.raster import View
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.model.processor import load_checkpoint, save_checkpoint
    from eov_edge.runtime.generation import GenerationConfig
    from eov_edge.runtime.pipeline import Pipeline

    vision, decoder = components
    model, processor = from_components("nano", vision_dir=vision, decoder_dir=decoder)
    save_checkpoint(model.eval(), processor, tmp_path / "ckpt")
    export_onnx(tmp_path / "artifacts", checkpoint=tmp_path / "ckpt")
    reference, processor = load_checkpoint(tmp_path / "ckpt")
    rng = np.random.default_rng(2)
    samples = []
    for question in ("Describe the image.", "Detect all ship.", "How many cars are there?"):
        photo = rng.integers(0, 256, size=(3, 64, 64)).astype(np.uint8)
        canvas, present = to_canvas(photo, np.ones((64, 64), bool), get_band_set("rgb8"))
        view = View(canvas, np.ones((64, 64), bool), present, "rgb8", "optical", ("photo",), (64, 64))
        samples.append(Sample(views=[view], instruction=question))
    batch = processor(samples, max_new_tokens=12)
    with torch.no_grad():
        want = reference.generate(**batch, max_new_tokens=12)
    with Pipeline.from_artifacts(tmp_path / "artifacts", threads=1) as pipeline:
        got, _ = pipeline.generate_ids({k: v.numpy() for k, v in batch.items()}, GenerationConfig(max_new_tokens=12))
    for row in range(len(samples)):
        assert processor.decode(got[row].tolist()).token_ids == processor.decode(want[row].tolist()).token_ids


@pytest.mark.slow
def test_the_chain_runs_from_the_users_files(tmp_path, components):
    """eov-train from saved components on a JSONL file (every PCMA stage, a step each), then
    eov-export onnx and eov-eval on its artifacts: nothing but the user's folders and files."""
    import json

    from click.testing import CliRunner

    from eov_edge.cli import eval_main, export_main
    from eov_edge.core.paths import heldout_pack
    from eov_edge.training.cli import train_main

    vision, decoder = components
    run = tmp_path / "run"

    def invoke(command, *args):
        result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    invoke(train_main, "--preset", "small", "--init-vision", vision, "--init-decoder", decoder, "--train-data",
           heldout_pack(), "--val-data", heldout_pack(), "--scale", 0.001, "--batch-size", 4, "--out", run)
    log = json.loads((run / "final" / "train_log.json").read_text())
    trained = list(dict.fromkeys(e["stage"] for e in log if "lm" in e))
    assert trained == ["alignment", "viewpoint", "imaging_physics", "joint", "sensor_matching", "answers",
                       "vqa_readout"]
    saved = json.loads((run / "last" / "train_config.json").read_text())
    assert saved["init_decoder"] == str(decoder) and saved["stages"][0]["trainable"] == [
        "stem", "trunk", "projector", "aux"]  # the pretrained decoder stays frozen while vision aligns
    invoke(export_main, "onnx", "--checkpoint", run / "final", "--out", tmp_path / "artifacts")
    invoke(eval_main, "--artifacts", tmp_path / "artifacts", "--data", heldout_pack(), "--per-task", 2,
           "--out", tmp_path / "eval.json")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert list(report["tasks"]) == ["classification", "multilabel", "caption", "vqa", "grounding", "detection",
                                     "change", "temporal", "cross_modal"]
    assert all(task["n"] == 2 and len(task["examples"]) == 2 for task in report["tasks"].values())
