"""Data-parallel training: torchrun with 2 processes (gloo on CPU) follows one process with the same
global batch, under DDP and FSDP2; a run stopped mid-stage resumes where it was, on any world size."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from eov_edge.core.errors import ConfigError
from eov_edge.core.paths import heldout_pack
from eov_edge.model.processor import load_checkpoint
from eov_edge.training import train as train_module
from eov_edge.training.train import LANGUAGE_LOSS_ONLY, StageConfig, TrainConfig, train
from tests.gpu import skip_unless

pytestmark = pytest.mark.slow


def tiny_run(**overrides) -> TrainConfig:
    """nano on the shipped pack, a few language-loss steps. The patch stem: the conv stem's batch norm
    normalizes each process's share (SyncBatchNorm, which would not, runs on CUDA only)."""
    stage = StageConfig("joint", 6, {"vqa": 1.0, "caption": 1.0, "detection": 1.0, "classification": 1.0},
                        batch_size=4, warmup_steps=1, **LANGUAGE_LOSS_ONLY)
    fields = dict(preset="nano", vision_stem="patch", stages=[stage], log_every=1, save_every=3,
                  train_data=str(heldout_pack()), val_data=str(heldout_pack()), validation_per_task=1)
    return TrainConfig(**{**fields, **overrides})


def torchrun(config: TrainConfig, out: Path, processes: int = 2, *flags: str) -> Path:
    config_file = out.parent / f"{out.name}.json"
    config_file.write_text(json.dumps(asdict(config)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "eov_edge.training", "--config", str(config_file), "--out", str(out), *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("checkpoint:") == 1  # only the first process speaks
    return out / "final"


def curve(final: Path) -> list[float]:
    return [entry["lm"] for entry in json.loads((final / "train_log.json").read_text()) if "lm" in entry]


def weights(final: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(final)
    return model.state_dict()


def assert_close_weights(a: dict, b: dict) -> None:
    """``a`` and ``b`` trained from one start, compared against how far training moved them: AdamW's
    first steps move a weight by ~lr whatever its gradient's size, so where a gradient is near zero,
    float rounding of its reduction flips a step; weight by weight that is noise, over the model it is
    small against the update."""
    from eov_edge.training.train import build_model

    start = build_model(tiny_run())[0].state_dict()
    assert a.keys() == b.keys()
    apart = sum((a[k].double() - b[k].double()).pow(2).sum() for k in a).sqrt().item()
    moved = sum((a[k].double() - start[k].double()).pow(2).sum() for k in a).sqrt().item()
    assert moved > 0 and apart / moved < 1e-3, (apart, moved)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return train(tiny_run(), tmp_path_factory.mktemp("one") / "run", progress=False)


@pytest.mark.parametrize("flags", [(), ("--fsdp",)], ids=["ddp", "fsdp2"])
def test_two_processes_follow_one_process_with_the_same_global_batch(tmp_path, one_process, flags):
    final = torchrun(tiny_run(), tmp_path / "run", 2, *flags)
    want, got = curve(one_process), curve(final)
    assert len(got) == len(want) == 6 and want[-1] < want[0] - 0.5  # it trains
    assert got == pytest.approx(want, rel=2e-5)
    assert_close_weights(weights(final), weights(one_process))
    if flags:  # the shards were gathered into a whole checkpoint, and the resumable state is sharded
        assert len(list((tmp_path / "run" / "last" / "state").glob("*.distcp"))) == 2


def test_gradient_accumulation_follows_the_whole_batch(tmp_path, one_process):
    final = train(tiny_run(grad_accum=2), tmp_path / "run", progress=False)
    assert curve(final) == pytest.approx(curve(one_process), rel=2e-5)
    assert_close_weights(weights(final), weights(one_process))


class Stop(Exception):
    pass


def stop_at(monkeypatch, step: int) -> None:
    real = train_module.step_examples

    def stopping(source, stage, tasks, seed, at, indices):
        if at == step:
            raise Stop
        return real(source, stage, tasks, seed, at, indices)

    monkeypatch.setattr(train_module, "step_examples", stopping)


def test_a_run_stopped_mid_stage_resumes_to_the_same_weights(tmp_path, monkeypatch, one_process):
    out = tmp_path / "run"
    stop_at(monkeypatch, 4)  # killed in step 4; the state saved after step 3 (save_every=3)
    with pytest.raises(Stop):
        train(tiny_run(), out, progress=False)
    assert json.loads((out / "last" / "position.json").read_text())["step"] == 3
    monkeypatch.undo()
    final = train(tiny_run(), out, progress=False)
    want, got = weights(one_process), weights(final)
    assert all(torch.equal(got[k], want[k]) for k in want)  # bit for bit: the same batches and state
    assert curve(final) == curve(one_process)


def test_a_run_stopped_in_one_process_resumes_sharded_over_two(tmp_path, monkeypatch, one_process):
    out = tmp_path / "run"
    stop_at(monkeypatch, 4)
    with pytest.raises(Stop):
        train(tiny_run(), out, progress=False)
    monkeypatch.undo()
    final = torchrun(tiny_run(), out, 2, "--fsdp")  # model and AdamW state resharded on load
    assert curve(final) == pytest.approx(curve(one_process), rel=2e-5)
    assert_close_weights(weights(final), weights(one_process))


def test_sharded_stages_go_on_in_one_process(tmp_path):
    first = StageConfig("first", 3, {"vqa": 1.0, "caption": 1.0}, batch_size=4, warmup_steps=1, **LANGUAGE_LOSS_ONLY)
    second = replace(first, name="second", task_weights={"detection": 1.0, "classification": 1.0})
    both = tiny_run(stages=[first, second])
    unbroken = train(both, tmp_path / "unbroken", progress=False)
    out = tmp_path / "run"
    torchrun(tiny_run(stages=[first]), out, 2, "--fsdp")
    assert json.loads((out / "last" / "position.json").read_text()) == {"stage_index": 1, "step": 0, "world_size": 2}
    final = train(both, out, progress=False)
    assert curve(final) == pytest.approx(curve(unbroken), rel=2e-5)
    assert_close_weights(weights(final), weights(unbroken))


def test_resuming_with_other_components_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    stop_at(monkeypatch, 4)
    with pytest.raises(Stop):
        train(tiny_run(), out, progress=False)
    with pytest.raises(ConfigError, match="init_decoder=None, not 'elsewhere'"):
        train(tiny_run(init_decoder="elsewhere"), out, progress=False)
    with pytest.raises(ConfigError, match="vision_stem='patch', not 'conv'"):
        train(tiny_run(vision_stem="conv"), out, progress=False)


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 3"):
        train(tiny_run(grad_accum=3), tmp_path / "run", progress=False)


def test_activation_checkpointing_recomputes_the_same_step(tmp_path, one_process):
    final = train(tiny_run(activation_checkpointing=True), tmp_path / "run", progress=False)
    assert curve(final) == pytest.approx(curve(one_process), rel=1e-6)


def test_bf16_autocast_trains(tmp_path, one_process):
    final = train(tiny_run(bf16=True), tmp_path / "run", progress=False)
    got, want = curve(final), curve(one_process)
    assert got[-1] < got[0] - 0.5  # it learns
    assert got == pytest.approx(want, rel=0.05)  # bfloat16 rounding, not another computation


def test_fsdp_in_one_process_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        train(tiny_run(fsdp=True), tmp_path / "run", progress=False)


@skip_unless("gpu")
def test_fsdp_bf16_on_cuda_follows_fp32_one_process(tmp_path, one_process):
    """The GPU path (NCCL, bf16 mixed precision, SyncBatchNorm) on every GPU of the machine."""
    processes = torch.cuda.device_count()
    config = replace(tiny_run(device="cuda"), stages=[replace(tiny_run().stages[0], batch_size=4 * processes)])
    final = torchrun(config, tmp_path / "run", processes, "--fsdp", "--bf16", "--activation-checkpointing")
    got = curve(final)
    assert got[-1] < got[0] - 0.5
