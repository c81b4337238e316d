"""The memory plan on paper against what a CPU training step of ``small`` saves for backward."""

import pytest
import torch

from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration
from eov_edge.training.losses import language_loss
from eov_edge.training.memory_plan import (
    Workload,
    activation_bytes,
    markdown,
    measured_activation_bytes,
    parameter_counts,
    plan,
)


@pytest.mark.slow
@pytest.mark.parametrize("views, text, eager, checkpointing", [(1, 64, False, False), (3, 128, True, False),
                                                               (2, 100, True, True)])
def test_planned_activations_match_what_autograd_saves_on_small(views, text, eager, checkpointing):
    torch.manual_seed(0)
    config = EarthOneVisionConfig.from_preset("small")
    model = EarthOneVisionForConditionalGeneration(config).train()
    if eager:
        model.language_model.set_attn_implementation("eager")
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    workload = Workload(micro_batch=2, views=views, text_tokens=text, eager_attention=eager)
    image = views * config.image_tokens_per_view
    ids = torch.randint(100, 2000, (2, image + text))
    ids[:, :image] = config.image_token_id
    labels = ids.clone()
    labels[:, : image + text - 30] = -100  # a 30-token answer
    pixels = torch.randn(2 * views, 16, config.image_size, config.image_size)

    def step():  # the training step's forward (losses.training_step), language loss only
        embeds = model.merge_image_embeds(ids, model.projector(model.vision_encoder(pixels, torch.zeros(2 * views).long())))
        logits = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
        return language_loss(logits, labels, 10, 1000, 0.5, 10.0)

    measured = measured_activation_bytes(model, step)
    planned = activation_bytes(config, workload, bf16=False, checkpointing=checkpointing, peak=False)
    assert planned == pytest.approx(measured, rel=0.08), (planned / 2**20, measured / 2**20)


def test_parameter_counts_are_the_models():
    config = EarthOneVisionConfig.from_preset("small")
    model = EarthOneVisionForConditionalGeneration(config)
    counts = parameter_counts(config)
    assert counts["vision"] == sum(p.numel() for p in model.vision_encoder.parameters())
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


def test_fsdp_divides_the_state_and_checkpointing_the_activations():
    config = EarthOneVisionConfig.from_preset("eov-2b")
    workload = Workload()
    ddp = plan(config, ("vision", "projector", "decoder"), 8, False, True, False, workload)
    fsdp = plan(config, ("vision", "projector", "decoder"), 8, True, True, False, workload)
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 8)
    assert fsdp["gradients"] == pytest.approx(ddp["gradients"] / 8)
    frozen_decoder = plan(config, ("vision", "projector"), 1, False, True, False, workload)
    assert frozen_decoder["optimizer"] < ddp["optimizer"] / 3
    checkpointed = plan(config, ("vision",), 1, False, True, True, workload)
    assert checkpointed["activations"] < frozen_decoder["activations"] / 5
    table = markdown(config, workload)
    assert table.count("| joint (everything trains) | 1 x 24 GB |") == 2 and "| no |" in table
