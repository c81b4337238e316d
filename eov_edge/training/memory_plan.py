"""Per-GPU training memory of the reference model, on paper: weights, gradients, optimizer, activations.

    python -m eov_edge.training.memory_plan --preset eov-2b            # the docs/training.md tables

Counts (P: parameters, T: trainable ones, W: processes, all float32 master weights and AdamW):

- weights: 4P bytes (DDP: every process holds all); FSDP: 4P/W, plus the layer being computed
  gathered whole (two layers with prefetch) in the compute dtype.
- gradients: 4T (DDP, written straight into its reduction buckets: ``gradient_as_bucket_view``);
  FSDP: 4T/W.
- optimizer: AdamW's two moments, 8T; FSDP 8T/W.
- bf16 autocast (DDP) caches a bfloat16 copy of each weight it casts within a step: +2P.
- activations saved for backward, per example, from the layers' structure (elements per token per
  layer, h = width, i = MLP width, kv = key/value width, a = heads, S = the tokens a layer attends over):
    SigLIP layer:  8h + 2i (two LayerNorms, q/k/v/out, GELU MLP) + a*S with eager attention
    Qwen2 layer:   9h + 2kv + 4i (two RMSNorms, q/k/v/o with RoPE, SwiGLU) + ~1.5*a*S eager
  times the tokens (views x patches for the vision tower, the prompt for the decoder), plus the
  loss's float32 logits and log-softmax (2 x S x vocab), and what lies outside the layers (the
  embeddings, FGVLA tap norms, projector, final norm). With activation checkpointing each layer
  keeps only its input (h per token) and one layer's activations exist at a time in backward.
  Bytes per element: 2 under bf16 autocast, 4 in float32.

:func:`measured_activation_bytes` counts what autograd actually saves (tests compare it with
:func:`activation_bytes` on ``small``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration

GiB = 2**30


@dataclass(frozen=True)
class Workload:
    """One micro-batch's shape: examples per process and per example views and text tokens."""

    micro_batch: int = 4
    views: int = 3  # the temporal tasks' series; most examples have 1 or 2
    text_tokens: int = 128  # question and answer (the longest detection answers are ~96 tokens)
    eager_attention: bool = True  # the attention losses read the decoder's softmax weights (train.py)


def parameter_counts(config: EarthOneVisionConfig) -> dict[str, int]:
    """Parameters per part of the model, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = EarthOneVisionForConditionalGeneration(config)
    return {
        "vision": sum(p.numel() for p in model.vision_encoder.parameters()),
        "projector": sum(p.numel() for p in model.projector.parameters()),
        "decoder": sum(p.numel() for p in model.language_model.parameters()),
    }


def sequence_length(config: EarthOneVisionConfig, workload: Workload) -> int:
    return workload.views * config.image_tokens_per_view + workload.text_tokens


def activation_elements(config: EarthOneVisionConfig, workload: Workload, checkpointing: bool = False,
                        vision_eager: bool = False) -> dict[str, int]:
    """Elements saved for backward per example, by part (see the module docstring)."""
    vision, text = config.vision_config, config.text_config
    patches = config.grid_size**2
    vision_layers = max(config.feature_layers)
    h, i, a = vision.hidden_size, vision.intermediate_size, vision.num_attention_heads
    per_vision_token = 8 * h + 2 * i + (a * patches if vision_eager else a)
    s = sequence_length(config, workload)
    d, di, da = text.hidden_size, text.intermediate_size, text.num_attention_heads
    kv = text.num_key_value_heads * (d // da)
    per_text_token = 9 * d + 2 * kv + 4 * di + (int(1.5 * da * s) if workload.eager_attention else da)
    vision_tokens = workload.views * patches
    recompute = 0
    if checkpointing:  # each layer's input kept; in backward one layer's activations at a time
        vision_total = vision_tokens * vision_layers * h
        text_total = s * text.num_hidden_layers * d
        recompute = max(vision_tokens * per_vision_token, s * per_text_token)
    else:
        vision_total = vision_tokens * vision_layers * per_vision_token
        text_total = s * text.num_hidden_layers * per_text_token
    # outside the layers (kept under checkpointing too): the embeddings' sum and each FGVLA tap's
    # LayerNorm input; the decoder's final norm and LM-head input
    taps = len(config.feature_layers)
    vision_total += vision_tokens * (taps + 1) * h
    text_total += s * 3 * d
    merged = config.multi_level_dim * config.merge_size**2
    projector = workload.views * config.image_tokens_per_view * (2 * merged + 3 * d)
    logits = 2 * s * text.vocab_size  # the loss's float32 logits and log-softmax
    return {"vision": vision_total, "projector": projector, "decoder": text_total, "logits": logits,
            "recompute": recompute}


def activation_bytes(config: EarthOneVisionConfig, workload: Workload, bf16: bool, checkpointing: bool,
                     peak: bool = True) -> int:
    """Bytes of activations per process: saved in forward, plus (``peak``) the layer recomputed in
    backward under checkpointing."""
    parts = activation_elements(config, workload, checkpointing)
    compute = 2 if bf16 else 4
    saved = parts["vision"] + parts["projector"] + parts["decoder"] + (parts["recompute"] if peak else 0)
    return workload.micro_batch * (compute * saved + 4 * parts["logits"])


def plan(config: EarthOneVisionConfig, trainable: tuple[str, ...], world: int, fsdp: bool, bf16: bool,
         checkpointing: bool, workload: Workload) -> dict[str, float]:
    """Per-GPU bytes of each kind for one training setup; ``trainable`` names parts of
    :func:`parameter_counts` (a stage's trainable groups, the heads left out: a few MB)."""
    counts = parameter_counts(config)
    params = sum(counts.values())
    train = sum(counts[p] for p in trainable)
    shards = world if fsdp else 1
    text = config.text_config
    d, kv = text.hidden_size, text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    layer = 2 * d * d + 2 * d * kv + 3 * d * text.intermediate_size  # one decoder layer's weights
    out = {
        "weights": 4 * params / shards + (2 * layer * (2 if bf16 else 4) if fsdp else 0),
        "gradients": 4 * train / shards,
        "optimizer": 8 * train / shards,
        "autocast copies": 2 * params if bf16 and not fsdp else 0,
        "activations": activation_bytes(config, workload, bf16, checkpointing),
    }
    out["total"] = sum(out.values())
    return out


STAGE_TRAINABLE = {
    "alignment (pretrained decoder frozen)": ("vision", "projector"),
    "joint (everything trains)": ("vision", "projector", "decoder"),
    "vqa_readout (decoder only)": ("decoder",),
}
SETUPS = (  # (label, processes, fsdp, GPU memory in GiB)
    ("8 x 80 GB, DDP", 8, False, 80), ("8 x 80 GB, FSDP", 8, True, 80),
    ("1 x 24 GB", 1, False, 24),
)


def markdown(config: EarthOneVisionConfig, workload: Workload, bf16: bool = True) -> str:
    counts = parameter_counts(config)
    s = sequence_length(config, workload)
    lines = [f"{config.preset}: {sum(counts.values()) / 1e9:.2f} B parameters (vision {counts['vision'] / 1e6:.0f} M, "
             f"projector {counts['projector'] / 1e6:.0f} M, decoder {counts['decoder'] / 1e6:.0f} M; vocabulary "
             f"{config.text_config.vocab_size}); micro-batch {workload.micro_batch} examples of {workload.views} views "
             f"({workload.views * config.grid_size**2} patches) and {s} decoder tokens; "
             f"{'bf16' if bf16 else 'fp32'} compute, fp32 master weights and AdamW. GiB per GPU:", "",
             "| stage | setup | checkpointing | weights | gradients | optimizer | autocast copies | activations "
             "| total | fits |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for stage, trainable in STAGE_TRAINABLE.items():
        for label, world, fsdp, memory in SETUPS:
            for checkpointing in (False, True):
                row = plan(config, trainable, world, fsdp, bf16, checkpointing, workload)
                fits = "yes" if row["total"] < 0.9 * memory * GiB else "no"  # 10% for the allocator and CUDA context
                cells = " | ".join(f"{row[k] / GiB:.1f}" for k in ("weights", "gradients", "optimizer",
                                                                   "autocast copies", "activations", "total"))
                lines.append(f"| {stage} | {label} | {'on' if checkpointing else 'off'} | {cells} | {fits} |")
    return "\n".join(lines)


def measured_activation_bytes(model: torch.nn.Module, step) -> int:
    """Bytes autograd saves for backward while ``step()`` runs (each storage once, parameters not counted)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and storage.device.type != "meta":
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="eov-2b")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="the decoder's vocabulary (with a pretrained decoder's tokenizer: its size + 1031)")
    parser.add_argument("--micro-batch", type=int, default=Workload.micro_batch)
    parser.add_argument("--views", type=int, default=Workload.views)
    parser.add_argument("--fp32", action="store_true")
    args = parser.parse_args(argv)
    config = EarthOneVisionConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    print(markdown(config, Workload(args.micro_batch, args.views), bf16=not args.fp32))


if __name__ == "__main__":
    main()
