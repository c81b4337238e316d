"""The reference model: shapes, wiring of views into the decoder, save/load, generate, training."""

import json

import pytest
import torch

from eov_edge.core.errors import CheckpointError, PromptError, ViewMismatchError
from eov_edge.core.inputs import Sample
from eov_edge.core.tasks import TASKS
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration
from eov_edge.model.processor import (
    EarthOneVisionProcessor,
    load_checkpoint,
    save_checkpoint,
)


def build(seed: int = 0, std: float | None = None, **overrides) -> EarthOneVisionForConditionalGeneration:
    torch.manual_seed(seed)
    model = EarthOneVisionForConditionalGeneration(EarthOneVisionConfig.from_preset("nano", **overrides)).eval()
    if std is not None:
        # Default init makes greedy decoding repeat one token whatever the input; a wider init
        # gives input-dependent answers, as trained weights would.
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def model():
    return build(std=0.2)


@pytest.fixture(scope="module")
def processor(model):
    return EarthOneVisionProcessor(TextTokenizer.from_file(), model.config)


@pytest.fixture(scope="module")
def real_samples(calib_samples, model):
    """One sample per calib entry (every modality), with its task's first template."""
    out = []
    for calib in calib_samples.values():
        task = TASKS[calib.task]
        instruction = task.templates[0].replace("{cls}", "car").replace("{options}", "A) x B) y")
        out.append(Sample(views=calib.read(size=model.config.image_size), instruction=instruction,
                          meta={"modality": calib.modality}))
    return out


def test_stage_shapes(model):
    c = model.config
    pixels = torch.randn(3, 16, c.image_size, c.image_size)
    features = model.vision_encoder(pixels, torch.tensor([0, 1, 3]))
    assert features.shape == (3, c.grid_size**2, 4 * c.vision_config.hidden_size)
    embeds = model.projector(features)
    assert embeds.shape == (3, c.image_tokens_per_view, c.text_config.hidden_size)


def test_token_merge_groups_2x2_neighbours(model):
    g, c = model.config.grid_size, 5
    features = torch.arange(2 * g * g * c, dtype=torch.float32).reshape(2, g * g, c)
    merged = model.projector.merge_tokens(features)
    grid = features.reshape(2, g, g, c)
    for gy, gx in [(0, 0), (1, 3), (g // 2 - 1, g // 2 - 1)]:
        expected = torch.cat([grid[:, 2 * gy + dy, 2 * gx + dx] for dy in (0, 1) for dx in (0, 1)], dim=-1)
        torch.testing.assert_close(merged[:, gy * (g // 2) + gx], expected)


def test_views_and_modalities_reach_the_logits(model, processor, real_samples):
    sample = real_samples[0]
    batch = processor([sample])
    base = model(**batch).logits[0, -1]
    other = dict(batch, pixel_values=batch["pixel_values"].flip(-1))
    assert (model(**other).logits[0, -1] - base).abs().max() > 1e-3
    other = dict(batch, modality_ids=torch.tensor([2]))
    assert (model(**other).logits[0, -1] - base).abs().max() > 1e-3


def test_multi_view_order_matters_and_counts_are_checked(model, processor, calib_samples):
    views = calib_samples["ssl4eo_s2a_0000200"].read(size=model.config.image_size)
    forward = model(**processor([Sample(views=views, instruction="Mark what changed.")])).logits[0, -1]
    backward = model(**processor([Sample(views=views[::-1], instruction="Mark what changed.")])).logits[0, -1]
    assert (forward - backward).abs().max() > 1e-3
    batch = processor([Sample(views=views, instruction="Mark what changed.")])
    with pytest.raises(PromptError, match="image placeholders"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:1], modality_ids=batch["modality_ids"][:1]))


def test_wrong_pixel_shape_is_a_clear_error(model):
    ids = torch.tensor([[2, 4, 3]])
    with pytest.raises(ViewMismatchError, match="read views with size=224"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 16, 64, 64), modality_ids=torch.tensor([0]))
    with pytest.raises(ViewMismatchError, match="one entry per view"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 16, 224, 224), modality_ids=torch.tensor([0, 1]))


def test_generate_on_real_samples_of_every_modality(model, processor, real_samples):
    assert {s.meta["modality"] for s in real_samples} == {
        "optical", "sar", "infrared", "multispectral", "temporal", "video"}
    answers = processor.answer(model, real_samples, max_new_tokens=8)
    assert len(answers) == len(real_samples)
    for answer in answers:
        assert 1 <= len(answer.token_ids) <= 8
        assert all(0 <= t < processor.tokenizer.vocab_size for t in answer.token_ids)
    # the answer depends on the input
    assert len({tuple(a.token_ids) for a in answers}) >= len(answers) // 2
    # batching (left padding) gives the same tokens as one sample at a time
    for sample, batched in zip(real_samples[:4], answers):
        assert processor.answer(model, [sample], max_new_tokens=8)[0].token_ids == batched.token_ids


def test_save_load_round_trip_gives_identical_logits(tmp_path, model, processor, real_samples):
    save_checkpoint(model, processor, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    loaded, loaded_processor = load_checkpoint(tmp_path / "ckpt")
    batch = processor(real_samples[:3])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    tied = loaded.language_model
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


def test_untied_embeddings_round_trip(tmp_path, processor):
    model = build(seed=1)
    model.config.text_config.tie_word_embeddings = False
    model = EarthOneVisionForConditionalGeneration(
        EarthOneVisionConfig(vision_config=model.config.vision_config.to_dict(),
                             text_config=model.config.text_config.to_dict())).eval()
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        model.language_model.lm_head.weight.normal_(0, 0.5)
    save_checkpoint(model, processor, tmp_path / "untied")
    loaded, _ = load_checkpoint(tmp_path / "untied")
    torch.testing.assert_close(loaded.language_model.lm_head.weight, model.language_model.lm_head.weight)
    assert not torch.equal(loaded.language_model.lm_head.weight, loaded.language_model.model.embed_tokens.weight)


def test_bad_checkpoints_are_clear_errors(tmp_path, model, processor):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")
    save_checkpoint(model, processor, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(dict(config, model_type="llava")))
    with pytest.raises(CheckpointError, match="'llava' checkpoint"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not load the weights"):
        load_checkpoint(tmp_path / "ckpt")


def test_save_is_atomic_when_writing_fails(tmp_path, model, processor, monkeypatch):
    save_checkpoint(model, processor, tmp_path / "ckpt")
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(processor, "save_pretrained", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, processor, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_training_steps_reduce_the_loss(processor, real_samples):
    model = build(seed=3).train()
    samples = [Sample(views=s.views, instruction=s.instruction, answer=answer)
               for s, answer in zip(real_samples[:3], ["pasture", "airplane", "annual crop"])]
    batch = processor(samples, with_labels=True, padding_side="right")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            params = dict(model.named_parameters())
            stem_first = next(n for n in params if n.startswith("vision_encoder.embeddings.patch_embedding."))
            for name in (stem_first, "vision_encoder.modality_embedding.weight",
                         "projector.fc1.weight", "language_model.model.layers.0.mlp.up_proj.weight"):
                grad = params[name].grad
                assert grad is not None and grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_encoder_and_projector_export_without_patching(model):
    """torch.export traces both stages as they are, with a dynamic number of views."""
    c = model.config
    views = torch.export.Dim("views", min=1, max=64)
    pixels = torch.randn(2, 16, c.image_size, c.image_size)
    modality = torch.tensor([0, 2])
    encoder = torch.export.export(model.vision_encoder, (pixels, modality),
                                  dynamic_shapes=({0: views}, {0: views}))
    more = torch.randn(3, 16, c.image_size, c.image_size), torch.tensor([1, 3, 0])
    torch.testing.assert_close(encoder.module()(*more), model.vision_encoder(*more))
    features = model.vision_encoder(*more)
    projector = torch.export.export(model.projector, (features,), dynamic_shapes=({0: views},))
    torch.testing.assert_close(projector.module()(features[:1]), model.projector(features[:1]))


def test_conv_stem_keeps_the_patch_grid_and_trains_saves_and_exports(tmp_path, processor, real_samples):
    from eov_edge.model.modeling import ConvPatchStem

    model = build(seed=5, vision_stem="conv")
    c = model.config
    stem = model.vision_encoder.embeddings.patch_embedding
    assert isinstance(stem, ConvPatchStem)
    assert [m.stride for m in stem if isinstance(m, torch.nn.Conv2d)] == [(4, 4), (2, 2), (2, 2), (1, 1)]
    assert [m.out_channels for m in stem if isinstance(m, torch.nn.Conv2d)] == [48, 96, 192, 192]
    pixels = torch.randn(2, 16, c.image_size, c.image_size)
    features = model.vision_encoder(pixels, torch.tensor([0, 2]))
    assert features.shape == (2, c.grid_size**2, 4 * c.vision_config.hidden_size)
    # a pixel moves only the tokens whose receptive field holds it (no global mixing in the stem)
    tokens = model.vision_encoder.embeddings(pixels)
    moved = pixels.clone()
    moved[0, :, 0, 0] += 5.0
    changed = (model.vision_encoder.embeddings(moved) - tokens).abs().amax(-1)  # (V, N)
    assert changed[0, 0] > 0 and changed[0, 1:].eq(0).all() and changed[1].eq(0).all()

    # BatchNorm running statistics are part of the checkpoint: train a step, save, reload, same logits
    model.train()
    processor = EarthOneVisionProcessor(TextTokenizer.from_file(), c)
    samples = [Sample(views=s.views, instruction=s.instruction, answer="pasture") for s in real_samples[:2]]
    loss = model(**processor(samples, with_labels=True, padding_side="right")).loss
    loss.backward()
    assert stem[0].weight.grad.abs().sum() > 0 and stem[1].num_batches_tracked.item() == 1
    model.eval()
    save_checkpoint(model, processor, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.vision_stem == "conv"
    batch = processor(real_samples[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    views = torch.export.Dim("views", min=1, max=64)
    encoder = torch.export.export(loaded.vision_encoder, (pixels, torch.tensor([0, 2])),
                                  dynamic_shapes=({0: views}, {0: views}))
    torch.testing.assert_close(encoder.module()(pixels[:1], torch.tensor([1])),
                               loaded.vision_encoder(pixels[:1], torch.tensor([1])))
