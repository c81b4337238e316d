"""One export spec per graph: names, dynamic axes, dummy inputs, tolerance (optimum OnnxConfig-style).

The registry :data:`GRAPH_SPECS` maps graph name -> spec; file and tensor names come from
:mod:`eov_edge.core.manifest`, which the runtime shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from eov_edge.core import manifest as mf
from eov_edge.export.decoder_module import ExportDecoder
from eov_edge.model import CachedDecoder, EarthOneVisionForConditionalGeneration

Model = EarthOneVisionForConditionalGeneration


@dataclass(frozen=True)
class Shapes:
    """Sizes of one set of dummy inputs."""

    views: int = 2
    batch: int = 2
    seq: int = 5
    past: int = 3


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: Callable[[Model], nn.Module]
    inputs: Callable[[Model, Shapes, torch.Generator], tuple]
    input_names: Callable[[Model], list[str]]
    output_names: Callable[[Model], list[str]]
    dynamic_shapes: Callable[[Model], object]  # torch.export dynamic_shapes for `inputs`
    atol: float  # max abs difference allowed against PyTorch in fp32
    # What validation compares the graph with; default: ``module`` itself. The decoder's is
    # transformers' own forward, so a mistake in the export module cannot validate itself.
    reference: Callable[[Model], nn.Module] | None = None

    @property
    def file(self) -> str:
        return mf.GRAPH_FILES[self.name]


def _dims():
    Dim = torch.export.Dim
    return {
        "views": Dim("views", min=1, max=256),
        "batch": Dim("batch", min=1, max=64),
        "seq": Dim("seq", min=1, max=8192),
        "past": Dim("past", min=0, max=8192),
        "total": Dim("total", min=1, max=16384),
    }


def _encoder_inputs(model: Model, s: Shapes, g: torch.Generator) -> tuple:
    size = model.config.image_size
    pixels = torch.randn(s.views, model.config.num_canvas_channels, size, size, generator=g)
    modality = torch.randint(0, model.config.num_modalities, (s.views,), generator=g)
    return pixels, modality


def _projector_inputs(model: Model, s: Shapes, g: torch.Generator) -> tuple:
    c = model.config
    return (torch.randn(s.views, c.grid_size**2, c.multi_level_dim, generator=g),)


def _decoder_inputs(model: Model, s: Shapes, g: torch.Generator) -> tuple:
    t = model.config.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    embeds = torch.randn(s.batch, s.seq, t.hidden_size, generator=g)
    mask = torch.ones(s.batch, s.past + s.seq, dtype=torch.long)
    if s.batch > 1 and s.past == 0 and s.seq > 2:
        mask[0, :2] = 0  # left padding in the first row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -s.seq:]
    past = tuple(torch.randn(s.batch, t.num_key_value_heads, s.past, head_dim, generator=g)
                 for _ in range(2 * t.num_hidden_layers))
    return embeds, mask, positions, past


class _NewPositionsReference(nn.Module):
    """``CachedDecoder`` (transformers' forward) with ``present`` cut to the new positions, the
    export module's contract."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.decoder = CachedDecoder(model.language_model)

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        logits, *presents = self.decoder(inputs_embeds, attention_mask, position_ids, past)
        seq = inputs_embeds.shape[1]
        return (logits, *(p[:, :, -seq:] for p in presents))


def _num_layers(model: Model) -> int:
    return model.config.text_config.num_hidden_layers


GRAPH_SPECS: dict[str, GraphSpec] = {
    mf.ENCODER: GraphSpec(
        mf.ENCODER,
        module=lambda m: m.vision_encoder,
        inputs=_encoder_inputs,
        input_names=lambda m: [mf.PIXEL_VALUES, mf.MODALITY_IDS],
        output_names=lambda m: [mf.FEATURES],
        dynamic_shapes=lambda m: (lambda d: ({0: d["views"]}, {0: d["views"]}))(_dims()),
        atol=1e-4,
    ),
    mf.PROJECTOR: GraphSpec(
        mf.PROJECTOR,
        module=lambda m: m.projector,
        inputs=_projector_inputs,
        input_names=lambda m: [mf.FEATURES],
        output_names=lambda m: [mf.IMAGE_EMBEDS],
        dynamic_shapes=lambda m: ({0: _dims()["views"]},),
        atol=1e-4,
    ),
    mf.DECODER: GraphSpec(
        mf.DECODER,
        module=lambda m: ExportDecoder(m.language_model),
        inputs=_decoder_inputs,
        input_names=lambda m: [mf.INPUTS_EMBEDS, mf.ATTENTION_MASK, mf.POSITION_IDS] + mf.past_names(_num_layers(m)),
        output_names=lambda m: [mf.LOGITS] + mf.present_names(_num_layers(m)),
        dynamic_shapes=lambda m: (lambda d: (
            {0: d["batch"], 1: d["seq"]}, {0: d["batch"], 1: d["total"]}, {0: d["batch"], 1: d["seq"]},
            tuple({0: d["batch"], 2: d["past"]} for _ in range(2 * _num_layers(m))),
        ))(_dims()),
        atol=1e-4,
        reference=_NewPositionsReference,
    ),
}
