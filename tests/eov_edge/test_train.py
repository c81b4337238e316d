"""A few real training steps: the loss falls, checkpoints save, reload and resume."""

import json

import pytest
import torch

from eov_edge.data.examples import AUX_CHANNELS, OBJECT_CLASSES
from eov_edge.processor import load_checkpoint
from eov_edge.train import StageConfig, TrainConfig, aux_loss, train


def test_aux_loss_picks_object_or_land_cover_per_view():
    logits = torch.zeros(3, 4, AUX_CHANNELS)
    targets = torch.zeros(3, 4, AUX_CHANNELS)
    k = 2 * len(OBJECT_CLASSES)
    targets[1, :, k] = 1.0  # land-cover view: all water
    has = torch.tensor([True, True, False])
    loss = aux_loss(logits, targets, has)
    # object view: BCE of logit 0 on all-negative targets = log 2; land view: CE of uniform = log 4
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + torch.log(torch.tensor(4.0)).item(),
                                        rel=1e-5)
    assert aux_loss(logits, targets, torch.tensor([False, False, False])).item() == 0.0


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
