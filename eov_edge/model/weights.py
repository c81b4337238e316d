"""A content hash of a model's weights, recorded beside every artifact made from them."""

from __future__ import annotations

import hashlib

import torch


def weights_sha256(model) -> str:
    """sha256 of a torch module's weights: every state-dict entry, sorted by name, as its name, dtype,
    shape and bytes. The same weights give the same hash whichever file or process they came from
    (a checkpoint folder, a preset with a fixed seed), so artifacts can be matched to their model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
