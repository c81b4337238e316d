"""A few real training steps: the loss falls, checkpoints save, reload and resume."""

import json

import pytest
import torch

from eov_edge.core.errors import ConfigError
from eov_edge.model.processor import load_checkpoint
from eov_edge.training.train import (
    StageConfig,
    TrainConfig,
    freeze_batch_norm,
    init_for_training,
    sincos_2d,
    smooth_bins,
    train,
)


@pytest.mark.data
@pytest.mark.slow
def test_few_steps_reduce_loss_and_checkpoint_reloads(tmp_path, shared_data):
    config = TrainConfig(
        preset="nano", seed=0, save_every=5, log_every=1, hit_uav_limit=40,
        stages=[StageConfig("joint", 14, {"vqa": 1.0, "classification": 1.0, "caption": 1.0},
                            batch_size=4, lr=2e-3, warmup_steps=2)],
    )
    final = train(config, tmp_path / "run", shared_data, progress=False)
    log = json.loads((final / "train_log.json").read_text())
    losses = [entry["lm"] for entry in log if "lm" in entry]
    validation = [entry["val_loss"] for entry in log if "val_loss" in entry]
    assert validation and set(validation[-1]) == {"vqa", "classification", "caption"}
    assert len(losses) == 14
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    model, processor = load_checkpoint(final)
    assert model.config.preset == "nano"
    # resuming a finished run trains nothing more and gives the same weights
    again = train(config, tmp_path / "run", shared_data, progress=False)
    reloaded, _ = load_checkpoint(again)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_stage_that_freezes_the_conv_stem_keeps_its_batch_norm_statistics():
    from eov_edge.model import (
        EarthOneVisionConfig,
        EarthOneVisionForConditionalGeneration,
    )

    model = EarthOneVisionForConditionalGeneration(EarthOneVisionConfig.from_preset("nano", vision_stem="conv")).train()
    norm = model.vision_encoder.embeddings.patch_embedding[1]
    pixels = torch.rand(2, 16, 224, 224)
    model.vision_encoder(pixels, torch.tensor([0, 1]))
    moved = norm.running_mean.clone()
    assert not torch.equal(moved, torch.zeros_like(moved))  # train mode updates them
    freeze_batch_norm(model.vision_encoder)
    model.vision_encoder(pixels * 3, torch.tensor([0, 1]))
    assert torch.equal(norm.running_mean, moved) and not norm.training
    assert model.vision_encoder.layers[0].training  # everything else still trains


@pytest.mark.data
@pytest.mark.slow
def test_conv_stem_run_trains_saves_and_refuses_a_resume_with_another_stem(tmp_path, shared_data):
    stage = StageConfig("joint", 3, {"vqa": 1.0, "detection": 1.0}, batch_size=2, warmup_steps=1)
    config = TrainConfig(preset="nano", seed=0, save_every=2, hit_uav_limit=20, stages=[stage], vision_stem="conv")
    final = train(config, tmp_path / "run", shared_data, progress=False)
    model, _ = load_checkpoint(final)
    assert model.config.vision_stem == "conv"
    norm = model.vision_encoder.embeddings.patch_embedding[1]
    assert norm.num_batches_tracked.item() == 3 and not torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    saved = json.loads((tmp_path / "run" / "last" / "train_config.json").read_text())
    assert saved["vision_stem"] == "conv"
    with pytest.raises(ConfigError, match="vision_stem='conv', not 'patch'; resume it with the same options"):
        train(TrainConfig(preset="nano", seed=0, hit_uav_limit=20, stages=[stage], vision_stem="patch"),
              tmp_path / "run", shared_data, progress=False)
    from eov_edge.model import EarthOneVisionConfig

    assert EarthOneVisionConfig.from_preset("nano").vision_stem == "conv"  # nano's default: the shipped stem
    # a run saved by an earlier eov-train (trainer.pt) is refused, not half-read
    (tmp_path / "run" / "last" / "trainer.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="earlier eov-train"):
        train(config, tmp_path / "run", shared_data, progress=False)


def test_training_init_gives_neighbouring_bins_and_patches_similar_codes():
    bins = smooth_bins(1000, 256)  # (1000, 256)
    cos = torch.nn.functional.cosine_similarity
    assert cos(bins[500], bins[501], dim=0) > 0.95
    assert cos(bins[500], bins[505], dim=0) > cos(bins[500], bins[600], dim=0) + 0.3
    patches = sincos_2d(14, 192)  # (196, 192), row-major grid
    assert patches.shape == (196, 192)
    centre = 7 * 14 + 7
    assert cos(patches[centre], patches[centre + 1], dim=0) > cos(patches[centre], patches[centre + 5], dim=0)
    assert cos(patches[centre], patches[centre + 14], dim=0) > cos(patches[centre], patches[centre + 70], dim=0)


def test_init_for_training_writes_the_codes_into_the_model():
    from eov_edge.core import slis
    from eov_edge.core.tokenizer import TextTokenizer
    from eov_edge.model import (
        EarthOneVisionConfig,
        EarthOneVisionForConditionalGeneration,
    )

    torch.manual_seed(0)
    model = EarthOneVisionForConditionalGeneration(EarthOneVisionConfig.from_preset("nano"))
    tokenizer = TextTokenizer.from_file()
    init_for_training(model, tokenizer)
    ids = [tokenizer.token_to_id(t) for t in slis.LOC_TOKENS]
    table = model.get_input_embeddings().weight
    cos = torch.nn.functional.cosine_similarity
    assert cos(table[ids[300]], table[ids[301]], dim=0) > 0.95
    assert model.get_output_embeddings().weight.data_ptr() == table.data_ptr()  # tied: the head moves too
    positions = model.vision_encoder.embeddings.position_embedding.weight
    assert cos(positions[0], positions[1], dim=0) > cos(positions[0], positions[195], dim=0)


def test_co_registered_views_name_the_sar_view_of_each_same_place_example():
    from types import SimpleNamespace

    def example(task, views, answer=None):
        return SimpleNamespace(task=task, views=[None] * views, target={"answer": answer} if answer else {})

    batch = [example("temporal", 3), example("cross_modal", 2, "A"), example("vqa", 1),
             example("cross_modal", 2, "B"), example("cross_modal", 2, "A")]
    from eov_edge.training.train import co_registered_views

    assert co_registered_views(batch).tolist() == [3, 8]  # views 0-2 temporal, 3-4 a pair, 5 vqa, 6-7 B, 8-9
