"""Shipping a training run: fp16 weights, the model card and an eval.json that names the shipped folder."""

import json

import pytest
import torch

from eov_edge.core.provenance import cpu_model
from eov_edge.model.processor import load_checkpoint
from eov_edge.training.train import StageConfig, TrainConfig, train

pytestmark = pytest.mark.slow


def test_ship_writes_the_card_and_an_eval_naming_the_shipped_folder(tmp_path, shared_data, monkeypatch):
    from eov_edge.training.ship import ship

    monkeypatch.setenv("EOV_DATA_DIR", str(shared_data))
    config = TrainConfig(preset="nano", seed=0, hit_uav_limit=20,
                         stages=[StageConfig("joint", 2, {"classification": 1.0}, batch_size=2, warmup_steps=1)])
    train(config, tmp_path / "run", shared_data, progress=False)
    out = tmp_path / "shipped"
    report = ship(tmp_path / "run", out, per_task=1, commit="0" * 40)
    saved = json.loads((out / "eval.json").read_text())
    # the folder it ships, not the temporary copy it evaluated
    assert saved["checkpoint"] == str(out) and saved["run"] == str(tmp_path / "run") == report["run"]
    assert set(saved["tasks"]) == set(report["tasks"]) and saved["per_task"] == 1
    card = (out / "README.md").read_text()
    assert "eov-train --preset nano --out runs/run --seed 0" in card and "0" * 40 in card
    # the machine it was made on: the same seed gives the same floats only on the same kind of CPU
    assert f"({cpu_model()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()})" in card
    assert {"train_log.json", "train_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    model, _ = load_checkpoint(out)
    assert model.config.preset == "nano"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ship-")] == []  # staging removed
