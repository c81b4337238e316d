"""Data-parallel training on PyTorch's own distributed engine: DDP, or FSDP2 (``fully_shard``).

    torchrun --nproc-per-node 8 -m eov_edge.training --preset eov-2b --fsdp --out runs/eov-2b ...

One process per device; torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR) says
where this one stands. Without it the run is one process and nothing here wraps anything.

How the global batch is shared (train.py): every example of a step is drawn from its own seed
(seed, stage, step, index), so any process can draw any example without the others'; rank r takes
examples r, r + W, ... and splits them into the micro-batches of gradient accumulation. The language
loss of each part is its share of the global batch's (:class:`eov_edge.training.losses.LossTotals`,
counts summed over the ranks), times W because DDP and FSDP average the ranks' gradients: the
gradient is the one-process gradient of the same global batch, to float rounding.

FSDP2 shards every vision and decoder layer, then the vision encoder, the projector and the training
heads, then the model (the decoder's embeddings, final norm and LM head, tied or not, stay in one
unit): each part the training step calls on its own (it reads the encoder's features and the
projector's output for its dense losses) gathers its own parameters. ``merge_image_embeds`` is
registered as a forward method, as it reads the token embeddings outside ``forward``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from eov_edge.core.errors import ConfigError


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes the checkpoints meant for people."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str | None = None) -> "Workers":
        """From torchrun's environment; the process group is started here (NCCL on CUDA, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        place = torch.device(device, local) if device == "cuda" else torch.device(device)
        if world == 1:
            return cls(device=place)
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local, place)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over every process (itself alone in a one-process run)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        out = tensor.to(self.device if self.device.type == "cuda" else "cpu").clone()
        dist.all_reduce(out)
        return out.to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class TrainingModule(nn.Module):
    """The model and its training-only heads as one module: what DDP wraps (its forward is the
    training step) and the root FSDP2 shards."""

    def __init__(self, model: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.heads = heads

    def forward(self, batch, stage, ids, totals=None, term_scale: float = 1.0):
        from eov_edge.training.losses import training_step

        return training_step(self.model, self.heads, batch, stage, ids, totals, term_scale)


def shard_with_fsdp(module: TrainingModule, workers: Workers, bf16: bool) -> TrainingModule:
    """FSDP2 over ``module`` in place (see the module docstring for the units); with ``bf16``
    parameters are gathered and computed in bfloat16, gradients reduced in float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(workers.device.type, (workers.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    model = module.model
    units = [*model.vision_encoder.layers, model.vision_encoder, model.projector,
             *model.language_model.model.layers, module.heads, model]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    register_fsdp_forward_method(model, "merge_image_embeds")
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


def check_batch_split(batch_size: int, workers: Workers, grad_accum: int) -> None:
    parts = workers.world_size * grad_accum
    if batch_size % parts:
        raise ConfigError(f"a stage's batch of {batch_size} examples cannot be split evenly over {workers.world_size} "
                          f"process(es) x {grad_accum} micro-batch(es); choose a batch size that is a multiple of "
                          f"{parts} (or fewer processes or --grad-accum)")
