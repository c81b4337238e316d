"""PCMA training of the reference model on real data: staged, resumable, deterministic.

    eov-train --preset nano --out runs/nano

Stages (each a :class:`StageConfig`; see docs/data.md for the data of each task):
1. ``alignment``: thermal and SAR object views with the dense auxiliary head (does an object centre
   fall in this patch, does a box cover it), plus land cover from Sentinel-2; the vision trunk gets a
   dense signal before the language loss has to carry it.
2. ``viewpoint``: aerial instruction data (counting, presence, grounding, detection, captions).
3. ``imaging_physics``: SAR, multispectral and optical-from-multispectral views (land cover,
   multi-label, cross-modal); stem, modality embeddings and trunk train, the decoder stays frozen.
4. ``joint``: every task kind, everything trainable.
5. ``sensor_matching``: cross-modal examples alone, with the dense SAR/optical match and alignment
   losses (the stem frozen).
6. ``answers``: the joint stage's task mix with the language loss alone (the training-only heads'
   losses off), a fresh optimizer at half the learning rate. From nano-v6's weights, 400 such steps
   lifted classification, VQA, grounding and change; the run with it (nano-v10, shipped) clears 7 task
   kinds against v6's 6 (docs/data.md). A guess at why: the heads' targets help the vision tower
   find objects early but compete with the answers late.
7. ``vqa_readout``: the decoder alone, VQA-heavy, with the answer-attention loss: the image tokens
   hold object presence that the decoder otherwise answers near the majority answer.
The decoder is trained from scratch here (there is no pretrained LLM to keep frozen), so unlike the
paper's alignment stage, stage 1 also trains it.

A run writes ``OUT/last/`` (model, optimizer, position) every ``save_every`` steps and
``OUT/stage-<name>/`` after each stage, and resumes from ``OUT/last`` when restarted.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from eov_edge.core import slis
from eov_edge.core.errors import ConfigError
from eov_edge.core.inputs import Sample
from eov_edge.core.provenance import git_commit
from eov_edge.core.tasks import TASKS
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration
from eov_edge.model.processor import EarthOneVisionProcessor, save_checkpoint
from eov_edge.training.data.examples import (
    AUX_CHANNELS,
    OBJECT_CLASSES,
    Example,
    ExampleFactory,
)

PARAMETER_GROUPS = ("stem", "trunk", "projector", "decoder", "aux")
TASK_KINDS = tuple(TASKS)
LOSS_NORMALIZATIONS = ("token", "task", "example")
IMAGE_POSITION_RMS = 0.5  # the projector output is ~0.24 rms at init: position a little stronger


@dataclass
class StageConfig:
    name: str
    steps: int
    task_weights: dict[str, float]
    trainable: tuple[str, ...] = PARAMETER_GROUPS
    lr: float = 1e-3
    batch_size: int = 16
    aux_weight: float = 1.0
    warmup_steps: int = 50
    # Location tokens: the target is (1 - w) one-hot + w Gaussian over neighbouring bins (sigma in
    # bins; 1000 bins over 224 px, so 10 bins ~ 2 px). A prediction one bin off is then nearly as
    # good as the exact bin, which gives every coordinate a dense gradient instead of 1-of-1000.
    loc_smoothing: float = 0.5
    pointer_weight: float = 1.0  # TrainingHeads.pointer: which image token a coordinate is about
    attention_weight: float = 1.0  # attention_loss: head 0 of these decoder layers finds the object
    attention_layers: tuple[int, ...] = (2, 3)
    loc_sigma_bins: float = 10.0
    # Which coordinates of a box the pointer and attention losses supervise (0 = x1 .. 3 = y2). Only
    # the first two: x2 and y2 follow from x1, y1 in the context plus a size prior, and a run that
    # supervised all four learned exactly those (teacher-forced correlation with the truth 0.94)
    # while the first coordinate, the one that must come from the image, stayed at chance (0.16).
    pointer_coordinates: tuple[int, ...] = (0, 1)
    token_aux_weight: float = 1.0  # TrainingHeads.token_dense on the projector output
    # answer_attention_loss: at a VQA answer, the same heads look at the asked class's objects
    answer_attention_weight: float = 1.0
    # language_loss's mean: "token" (every answer token alike), "task" (each task's tokens weighted
    # by its share of the batch's examples) or "example" (every example alike); see language_loss
    loss_normalization: str = "token"
    # cross_modal_alignment_loss: the image tokens of co-registered SAR and optical crops of one place
    # are pulled together cell by cell, against the same cell of the batch's other places
    cross_modal_align_weight: float = 0.0
    # cross_modal_match_loss: at every optical image token of a cross-modal example, head 1 of these
    # decoder layers attends to the SAR token of the same cell, and TrainingHeads.match reads from the
    # last layer's state whether the two views show the same place
    cross_modal_match_weight: float = 0.0
    match_attention_layers: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, not {self.loss_normalization!r}")


# StageConfig overrides that switch every training-only head's loss off (the answers stage)
LANGUAGE_LOSS_ONLY = dict(aux_weight=0.0, token_aux_weight=0.0, pointer_weight=0.0, attention_weight=0.0,
                          answer_attention_weight=0.0)


@dataclass
class TrainConfig:
    preset: str = "nano"
    seed: int = 0
    stages: list[StageConfig] = field(default_factory=list)
    save_every: int = 200
    log_every: int = 25
    validate_every: int = 400  # teacher-forced validation loss per task, also after each stage
    validation_per_task: int = 4
    threads: int = 2
    hit_uav_limit: int | None = None  # for quick tests
    vision_stem: str | None = None  # EarthOneVisionConfig.vision_stem; None: the preset's

    @classmethod
    def pcma(cls, preset: str = "nano", scale: float = 1.0, **kwargs) -> "TrainConfig":
        """The PCMA stages and the answers stage; ``scale`` multiplies every stage's step count."""
        def steps(n: int) -> int:
            return max(1, int(round(n * scale)))

        object_tasks = {"vqa": 2.0, "grounding": 2.0, "detection": 2.0, "caption": 1.0}
        land_tasks = {"classification": 1.0, "multilabel": 1.0, "cross_modal": 1.0}
        joint_tasks = dict(object_tasks, **land_tasks, change=1.5, temporal=1.5)
        stages = [
            StageConfig("alignment", steps(300),
                        {"vqa": 1.0, "caption": 1.0, "classification": 1.0, "grounding": 1.0}, aux_weight=2.0,
                        token_aux_weight=2.0),
            StageConfig("viewpoint", steps(700), dict(object_tasks, change=1.0, temporal=1.0)),
            StageConfig("imaging_physics", steps(400), land_tasks, trainable=("stem", "trunk", "projector", "aux")),
            # 2100 steps, not nano-v13's 2400: the read-out stage below takes their time (150-minute bar).
            StageConfig("joint", steps(2100), joint_tasks, lr=5e-4),
            # Cross-modal examples only, with their dense match supervision and the SAR/optical
            # alignment loss (InfoNCE over the ~8 same-place pairs of a batch). The stem (and its batch
            # norm) stays frozen: its statistics must not move to two modalities' alone. Without this
            # stage nano-v11 answered cross-modal below its majority answer; with the match terms mixed
            # into the answers stage instead (~3 cross-modal pairs a batch) the model learned its
            # training windows (match head 0.86 on them) but not held-out ones (0.39; docs/data.md).
            # 400 steps, not 200: the match loss leaves ln 2 in a phase transition whose step varies
            # with the weights it starts from (~125 in nano-v13, ~175 in nano-v14, whose 200-step
            # stage ended mid-transition and answered cross-modal below its baseline).
            StageConfig("sensor_matching", steps(400), {"cross_modal": 1.0}, lr=5e-4, warmup_steps=0,
                        trainable=("trunk", "projector", "decoder", "aux"), **LANGUAGE_LOSS_ONLY,
                        cross_modal_align_weight=1.0, cross_modal_match_weight=1.0),
            StageConfig("answers", steps(400), joint_tasks, lr=2.5e-4, warmup_steps=0, **LANGUAGE_LOSS_ONLY),
            # The decoder alone (stem, trunk and projector frozen: the image tokens sensor_matching
            # aligned stay as they are), VQA-heavy, with the answer-attention loss on. nano-v13's image
            # tokens held VQA presence linearly (0.83-0.85 from pooled tokens) while its decoder
            # answered it near the majority answer; this stage teaches the decoder to read it out.
            # Temporal at 4 (not 1.5): with less the stage cost temporal direction 0.71 -> 0.61.
            StageConfig("vqa_readout", steps(600), dict(joint_tasks, vqa=10.0, temporal=4.0), lr=5e-4,
                        warmup_steps=0, trainable=("decoder",), **dict(LANGUAGE_LOSS_ONLY, answer_attention_weight=1.0)),
        ]
        return cls(preset=preset, stages=stages, **kwargs)


class TrainingHeads(nn.Module):
    """Training-only heads (not in the checkpoint's model, not exported).

    dense: per encoder patch, object centre/cover and land-cover logits from the multi-level features.
    token_dense: the same targets pooled onto the merged image tokens, read from the projector
        output: "an object of class k is here" becomes a linear direction of the decoder's input
        tokens, which the decoder's attention queries can match (on the encoder patches it is a
        small subspace of the multi-level features the projector may or may not keep).
    pointer: at the first coordinates of each box in the answer, which of the view's image-token
        cells (the merged 7x7 grid on nano) holds the shape's centre, read linearly from the decoder
        state that predicts the coordinate. A coarse target (49 cells, not 1000 bins) that makes the
        decoder gather where the object is before it emits a coordinate; without it a from-scratch
        run emitted the same box for every image (docs/data.md).
    match: at each optical image token of a cross-modal example, from the decoder's last-layer state,
        whether the SAR view shows the same place (cross_modal_match_loss).
    """

    def __init__(self, feature_dim: int, text_width: int, tokens_per_view: int) -> None:
        super().__init__()
        self.dense = nn.Linear(feature_dim, AUX_CHANNELS)
        self.token_dense = nn.Linear(text_width, AUX_CHANNELS)
        self.pointer = nn.Linear(text_width, tokens_per_view)
        # Added after nano-v11: initialised from its own seed and with the global RNG state restored,
        # so the draws of everything built after the heads (and so every earlier run) stay as they were.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0x6D61)
            self.match = nn.Linear(text_width, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dense(features)  # (V, N, AUX)


@dataclass(frozen=True)
class PointerIds:
    """Token ids the pointer targets are read from."""

    image: int
    box_open: int
    loc_first: int
    view_first: int  # <t0>; <t1>.. follow

    @classmethod
    def from_tokenizer(cls, tokenizer: TextTokenizer, image_token_id: int) -> "PointerIds":
        views = [tokenizer.token_to_id(t) for t in slis.VIEW_TOKENS]
        if views != list(range(views[0], views[0] + len(views))):
            raise ValueError("the tokenizer's view tokens must have consecutive ids")
        return cls(image_token_id, tokenizer.token_to_id("<box>"), tokenizer.token_to_id(slis.LOC_TOKENS[0]),
                   views[0])


def pointer_targets(labels: torch.Tensor, ids: PointerIds, tokens_per_view: int,
                    coordinates: tuple[int, ...] = (0, 1, 2, 3),
                    ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """For the location tokens at ``coordinates`` (0 = x1 .. 3 = y2) of every box in the answers
    (labels (B, S)): the state that predicts it, as (row, position), the image-token cell
    (row-major) holding the box centre, and the view the box is in (its ``<tN>`` tag, else 0)."""
    side = int(round(math.sqrt(tokens_per_view)))
    queries, targets, views = [], [], []
    for row in range(labels.shape[0]):
        answer = [(pos, tok) for pos, tok in enumerate(labels[row].tolist()) if tok != -100]
        view, i = 0, 0
        while i < len(answer):
            tok = answer[i][1]
            if ids.view_first <= tok < ids.view_first + slis.MAX_VIEWS:
                view = tok - ids.view_first
            if tok == ids.box_open and i + 4 < len(answer):
                locs = [t - ids.loc_first for _, t in answer[i + 1 : i + 5]]
                if all(0 <= b < slis.NUM_LOC_BINS for b in locs):
                    col = min(side - 1, int((locs[0] + locs[2]) / 2 / slis.NUM_LOC_BINS * side))
                    cell_row = min(side - 1, int((locs[1] + locs[3]) / 2 / slis.NUM_LOC_BINS * side))
                    for k, (pos, _) in enumerate(answer[i + 1 : i + 5]):
                        if k not in coordinates:
                            continue
                        queries.append((row, pos - 1))
                        targets.append(cell_row * side + col)
                        views.append(view)
                i += 4
            i += 1
    return queries, targets, views


def attention_loss(attentions: tuple[torch.Tensor, ...], input_ids: torch.Tensor, labels: torch.Tensor,
                   ids: PointerIds, tokens_per_view: int, layers: tuple[int, ...], targets=None) -> torch.Tensor:
    """Attention supervision: head 0 of each of ``layers``, at the state that predicts a box
    coordinate, should attend to the image token holding the box centre (-log of that weight).

    attentions: per decoder layer (B, H, S, S) softmax weights (eager attention). Trains the
    decoder's own query/key maps to find the object, which the language loss alone teaches too
    slowly: the first coordinate of a box is the one no earlier answer token gives away.
    """
    queries, cells, views = targets or pointer_targets(labels, ids, tokens_per_view)
    rows, positions, keys = [], [], []
    image_positions: dict[int, torch.Tensor] = {}  # per batch row
    for (row, pos), cell, view in zip(queries, cells, views):
        if row not in image_positions:
            image_positions[row] = (input_ids[row] == ids.image).nonzero()[:, 0]
        images = image_positions[row]
        if (view + 1) * tokens_per_view <= images.numel():
            rows.append(row)
            positions.append(pos)
            keys.append(int(images[view * tokens_per_view + cell]))
    if not rows:
        return attentions[0].sum() * 0.0
    r, q, k = torch.tensor(rows), torch.tensor(positions), torch.tensor(keys)
    weights = torch.stack([attentions[layer][r, 0, q, k] for layer in layers])  # (L, M)
    return -torch.log(weights + 1e-6).mean()


def answer_attention_loss(attentions: tuple[torch.Tensor, ...], input_ids: torch.Tensor, labels: torch.Tensor,
                          asked_class: torch.Tensor, token_targets: torch.Tensor, image_token_id: int,
                          layers: tuple[int, ...]) -> torch.Tensor:
    """Attention supervision for counting and presence questions.

    At the state that predicts the first answer token, head 0 of each of ``layers`` should spread
    its attention over the image tokens holding a centre of the asked class: soft cross-entropy
    against that class's centre map, normalised. Rows whose question names no class
    (``asked_class`` -1) or whose view holds no such object give no term. Added because nano-v5
    answered counts from the question alone (always "0" for cars and people, "1" for ships) while
    its token-level object head found the objects; measured in nano-v6 (docs/runs/nano-v6-eval.md),
    it added no VQA accuracy beyond what the longer joint stage gave on its own.

    attentions: per decoder layer (B, H, S, S); asked_class (B,); token_targets (V, N', AUX), the
    batch's views in row order (``pool_to_tokens``); one view per asking row.
    """
    tokens_per_view = token_targets.shape[1]
    is_image = input_ids == image_token_id  # (B, S)
    first_view = torch.cumsum(is_image.sum(1) // tokens_per_view, 0) - is_image.sum(1) // tokens_per_view  # (B,)
    terms = []
    for row in (asked_class >= 0).nonzero()[:, 0].tolist():
        centres = token_targets[int(first_view[row]), :, 2 * int(asked_class[row])]  # (N',)
        answer = (labels[row] != -100).nonzero()[:, 0]
        if centres.sum() == 0 or answer.numel() == 0:
            continue
        keys = is_image[row].nonzero()[:tokens_per_view, 0]  # (N',) positions of the view's tokens
        query = int(answer[0]) - 1
        target = centres / centres.sum()
        for layer in layers:
            weights = attentions[layer][row, 0, query, keys]  # (N',)
            terms.append(-(target * torch.log(weights + 1e-6)).sum())
    if not terms:
        return attentions[0].sum() * 0.0
    return torch.stack(terms).mean()


def pointer_loss(heads: TrainingHeads, hidden: torch.Tensor, labels: torch.Tensor, ids: PointerIds,
                 tokens_per_view: int, targets=None) -> torch.Tensor:
    """Cross-entropy of the cell read from each coordinate's predicting state; 0 without boxes.

    hidden (B, S, D): the decoder's last-layer states. ``targets``: ``pointer_targets``' result, when
    the caller already has it.
    """
    queries, cells, _ = targets or pointer_targets(labels, ids, tokens_per_view)
    if not queries:
        return hidden.sum() * 0.0
    rows = torch.tensor([r for r, _ in queries])
    positions = torch.tensor([p for _, p in queries])
    return nn.functional.cross_entropy(heads.pointer(hidden[rows, positions]), torch.tensor(cells))  # (M, K)


def pool_to_tokens(targets: torch.Tensor, projector) -> torch.Tensor:
    """Patch targets (V, g*g, AUX) -> merged-token targets (V, (g/m)^2, AUX), grouped by the
    projector's own ``merge_tokens``: object centre/cover is the max over the m*m patches, land-cover
    fractions the mean."""
    merged = projector.merge_tokens(targets)  # (V, N', m*m*AUX), patch-major within a token
    x = merged.reshape(*merged.shape[:2], projector.merge_size**2, targets.shape[-1])  # (V, N', m*m, AUX)
    k = 2 * len(OBJECT_CLASSES)
    return torch.cat([x[..., :k].amax(dim=2), x[..., k:].mean(dim=2)], dim=-1)


def shows_one_place(example: Example) -> bool:
    """A cross-modal example whose SAR and optical views are one window (answer A)."""
    return example.task == "cross_modal" and example.target.get("answer") == "A"


def co_registered_views(examples: list[Example]) -> torch.Tensor:
    """(P,) the flat view index (over the batch's views, in order) of the SAR view of each
    cross-modal example whose two views show the same place (answer A); its optical view is next."""
    first, starts = 0, []
    for example in examples:
        if shows_one_place(example):
            starts.append(first)
        first += len(example.views)
    return torch.tensor(starts, dtype=torch.long)


def cross_modal_alignment_loss(image_embeds: torch.Tensor, sar_views: torch.Tensor,
                               position_embedding: torch.Tensor | None, temperature: float = 0.1) -> torch.Tensor:
    """Contrastive alignment of co-registered SAR and optical image tokens (PCMA's imaging-physics
    gap, cell by cell).

    image_embeds (V, N', D): the projector output; sar_views (P,): views whose next view is the
    optical crop of the same window. The projector's position embedding is removed first, and the
    negatives of SAR cell n of place p are cell n of the batch's other places (InfoNCE over places,
    both directions): matching by position alone cannot lower it, only what the two sensors share.
    Needs two places; else 0.
    """
    if len(sar_views) < 2:
        return image_embeds.sum() * 0.0
    content = image_embeds if position_embedding is None else image_embeds - position_embedding  # (V, N', D)
    sar = nn.functional.normalize(content[sar_views], dim=-1)  # (P, N', D)
    optical = nn.functional.normalize(content[sar_views + 1], dim=-1)  # (P, N', D)
    similarity = torch.einsum("pnd,qnd->npq", sar, optical) / temperature  # (N', P, P): SAR p vs optical q
    target = torch.arange(len(sar_views)).repeat(similarity.shape[0])  # (N' * P,)
    forward = nn.functional.cross_entropy(similarity.flatten(0, 1), target)
    backward = nn.functional.cross_entropy(similarity.transpose(1, 2).flatten(0, 1), target)
    return (forward + backward) / 2


def cross_modal_match_loss(heads: TrainingHeads, hidden: torch.Tensor, attentions: tuple[torch.Tensor, ...],
                           input_ids: torch.Tensor, rows: torch.Tensor, same: torch.Tensor, image_token_id: int,
                           tokens_per_view: int, layers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense supervision of the comparison a cross-modal answer needs; returns (match, attention).

    hidden (B, S, D): the decoder's last-layer states; attentions: per layer (B, H, S, S); rows (R,):
    the cross-modal rows, SAR view first, optical second; same (R,): 1.0 where both views are one window.
    match: BCE of TrainingHeads.match at each of the N' optical tokens against ``same`` (the windows of
    a "no" pair overlap by less than a quarter on an axis, so no optical cell sees its SAR cell's ground).
    attention: head 1 of each of ``layers``, at optical cell n, should attend to SAR cell n (-log weight).
    The language loss gives this comparison one bit per example at the answer, and a model trained on it
    alone did not fit its training pairs (docs/data.md); here every optical token carries the bit, and
    the attention term says where to look.
    """
    if rows.numel() == 0:
        zero = hidden.sum() * 0.0
        return zero, zero
    r = rows[:, None]  # (R, 1)
    images = torch.stack([(input_ids[i] == image_token_id).nonzero()[: 2 * tokens_per_view, 0] for i in rows.tolist()])
    sar, optical = images[:, :tokens_per_view], images[:, tokens_per_view:]  # (R, N') positions
    logits = heads.match(hidden[r, optical])[..., 0]  # (R, N')
    match = nn.functional.binary_cross_entropy_with_logits(logits, same[:, None].expand_as(logits))
    weights = torch.stack([attentions[layer][r, 1, optical, sar] for layer in layers])  # (L, R, N')
    return match, -torch.log(weights + 1e-6).mean()


def aux_loss(logits: torch.Tensor, targets: torch.Tensor, has_target: torch.Tensor) -> torch.Tensor:
    """logits, targets (V, N, AUX); has_target (V,) bool.

    Object views: BCE on the centre/cover maps (positives weighted 10: objects are rare).
    Land-cover views (their fractions sum to 1 per patch): soft cross-entropy over the 4 classes.
    """
    k = 2 * len(OBJECT_CLASSES)
    land_view = targets[:, :, k:].sum(dim=(1, 2)) > 0  # (V,)
    losses = []
    objects = has_target & ~land_view
    if objects.any():
        losses.append(nn.functional.binary_cross_entropy_with_logits(
            logits[objects][..., :k], targets[objects][..., :k], pos_weight=torch.tensor(10.0)))
    land = has_target & land_view
    if land.any():
        log_p = torch.log_softmax(logits[land][..., k:], dim=-1)
        losses.append(-(targets[land][..., k:] * log_p).sum(-1).mean())
    return sum(losses) if losses else logits.sum() * 0.0


def parameter_groups(model: EarthOneVisionForConditionalGeneration, aux: TrainingHeads) -> dict[str, list[nn.Parameter]]:
    encoder = model.vision_encoder
    return {
        "stem": list(encoder.embeddings.parameters()) + list(encoder.modality_embedding.parameters()),
        "trunk": list(encoder.layers.parameters()) + list(encoder.tap_norms.parameters()),
        "projector": list(model.projector.parameters()),
        "decoder": list(model.language_model.parameters()),
        "aux": list(aux.parameters()),
    }


def freeze_batch_norm(module: nn.Module) -> None:
    """BatchNorm layers (``vision_stem="conv"``) to eval mode: a stage that does not train the stem
    must not move its running statistics either (train mode would, with or without gradients)."""
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MAE's fixed 2D sine-cosine table (grid*grid, dim): first half encodes y, second half x."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None, :]  # (N, dim/4)
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1)  # (N, dim) when dim % 4 == 0
    return torch.nn.functional.pad(table, (0, dim - table.shape[1])).float()


def smooth_bins(num_bins: int, dim: int) -> torch.Tensor:
    """(num_bins, dim) sine-cosine code of the bin index, wavelengths 4*num_bins down to 10 bins."""
    half = dim // 2
    wavelengths = torch.logspace(math.log10(4 * num_bins), 1.0, half, dtype=torch.float64)  # (dim/2,)
    angles = torch.arange(num_bins, dtype=torch.float64)[:, None] * (2 * math.pi / wavelengths)[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1])).float()


def init_for_training(model: EarthOneVisionForConditionalGeneration, tokenizer: TextTokenizer) -> None:
    """Structured starting points for the two maps a from-scratch model is slowest to find.

    Grounding needs "which patch holds the object" (vision positions) turned into "which location
    bin to emit" (location-token embeddings, tied with the output head). With random init both are
    unstructured, and a first run trained for 87 minutes gave the same box for every image. Here
    the ViT's learned position embeddings start as MAE's 2D sine-cosine table and the 1000
    location tokens as a sine-cosine code of their bin index, so neighbouring bins start close and
    the map from a patch's position to a coordinate is near-linear from step 0. Both stay trainable;
    the checkpoint format and the exported graphs do not change.
    """
    embeddings = model.vision_encoder.embeddings
    with torch.no_grad():
        table = embeddings.position_embedding.weight  # (N, Dv)
        grid = int(round(math.sqrt(table.shape[0])))
        code = sincos_2d(grid, table.shape[1])  # rms ~0.7
        table.copy_(code * (0.5 / code.pow(2).mean().sqrt()))
        tokens = model.get_input_embeddings().weight  # (V, Dlm), tied with the output head
        ids = torch.tensor([tokenizer.token_to_id(t) for t in slis.LOC_TOKENS])
        half = tokens.shape[1] // 2
        code = smooth_bins(len(ids), half)  # (1000, Dlm/2)
        # The same code in both halves of a location token; an image token carries its x code in
        # the first half and its y code in the second (below), so emitting "x1" or "y1" is copying
        # one half of the attended image token's position.
        loc = torch.nn.functional.pad(torch.cat([code, code], dim=1), (0, tokens.shape[1] - 2 * half))
        tokens[ids] = loc * (tokens.std() / loc.std())
        positions = model.projector.position_embedding  # (N', Dlm) or None
        if positions is not None:
            side = int(round(math.sqrt(positions.shape[0])))
            centres = [slis.quantize((i + 0.5) / side, 1.0) for i in range(side)]  # bin of each column
            rows = torch.tensor([centres[r] for r in range(side) for _ in range(side)])  # (N',)
            cols = torch.tensor([centres[c] for _ in range(side) for c in range(side)])
            grid_code = torch.cat([code[cols], code[rows]], dim=1)  # (N', 2*half): x then y
            grid_code = torch.nn.functional.pad(grid_code, (0, positions.shape[1] - 2 * half))
            positions.copy_(grid_code * (IMAGE_POSITION_RMS / grid_code.pow(2).mean().sqrt()))


def language_loss(logits: torch.Tensor, labels: torch.Tensor, loc_first: int, num_loc: int,
                  smoothing: float, sigma_bins: float, row_groups: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy, Gaussian-smoothed over location bins where the label is one.

    logits (B, S, V), labels (B, S) with -100 on unsupervised positions. Without ``row_groups``:
    the mean over supervised tokens, as transformers' causal-LM loss (which this equals when
    ``smoothing`` is 0). With ``row_groups`` (B,) ints: each group's token mean, weighted by its
    share of the rows, so a group's weight is its number of examples, not of answer tokens. Groups
    = tasks: a task mixture weight means what it says, where per token a 2-token VQA answer
    carried ~1/35 of a 70-token detection list (docs/data.md); groups = rows: per-example mean.
    """
    targets = labels[:, 1:]  # (B, S-1)
    valid = targets != -100
    log_p = torch.log_softmax(logits[:, :-1][valid].float(), dim=-1)  # (M, V)
    target = targets[valid]  # (M,)
    per_token = -log_p.gather(1, target[:, None])[:, 0]  # (M,)
    is_loc = (target >= loc_first) & (target < loc_first + num_loc)
    if smoothing > 0 and is_loc.any():
        bins = torch.arange(num_loc, device=logits.device, dtype=torch.float32)  # (L,)
        centre = (target[is_loc] - loc_first).float()[:, None]  # (M_loc, 1)
        soft = torch.exp(-0.5 * ((bins[None, :] - centre) / sigma_bins) ** 2)  # (M_loc, L)
        soft = soft / soft.sum(-1, keepdim=True)
        soft_nll = -(soft * log_p[is_loc][:, loc_first : loc_first + num_loc]).sum(-1)  # (M_loc,)
        per_token = per_token.clone()
        per_token[is_loc] = (1 - smoothing) * per_token[is_loc] + smoothing * soft_nll
    if row_groups is None:
        return per_token.mean()
    groups = row_groups[valid.nonzero()[:, 0]]  # (M,) each supervised token's group, row-major like per_token
    size = int(row_groups.max()) + 1
    token_sum = per_token.new_zeros(size).index_add_(0, groups, per_token)  # (G,)
    token_count = torch.bincount(groups, minlength=size)  # (G,)
    supervised_rows = row_groups[valid.any(1)]  # rows with at least one supervised token
    row_share = torch.bincount(supervised_rows, minlength=size) / supervised_rows.numel()  # (G,)
    present = token_count > 0
    return (row_share[present] * token_sum[present] / token_count[present]).sum()


def collate(examples: list[Example], processor: EarthOneVisionProcessor, grid: int) -> dict[str, torch.Tensor]:
    samples = [Sample(views=e.views, instruction=e.instruction, answer=e.answer) for e in examples]
    batch = processor(samples, with_labels=True, padding_side="right")
    targets, has = [], []
    for example in examples:
        for aux in example.aux:
            has.append(aux is not None)
            targets.append(torch.zeros(grid * grid, AUX_CHANNELS) if aux is None
                           else torch.from_numpy(aux).reshape(grid * grid, AUX_CHANNELS))
    batch["aux_targets"] = torch.stack(targets)
    batch["aux_mask"] = torch.tensor(has)
    # the object class a counting or presence question asks about (answer_attention_loss), else -1
    batch["asked_class"] = torch.tensor([OBJECT_CLASSES.index(e.target["class"]) if e.task == "vqa" else -1
                                         for e in examples])
    batch["task_index"] = torch.tensor([TASK_KINDS.index(e.task) for e in examples])  # (B,) loss_groups
    batch["co_registered_sar_views"] = co_registered_views(examples)  # (P,) cross_modal_alignment_loss
    # cross_modal_match_loss: the rows of cross-modal examples, and whether their views show one place
    rows = [i for i, e in enumerate(examples) if e.task == "cross_modal"]
    batch["cross_modal_rows"] = torch.tensor(rows, dtype=torch.long)  # (R,)
    batch["cross_modal_same"] = torch.tensor([float(shows_one_place(examples[i])) for i in rows])  # (R,)
    return batch


def training_step(model, heads: TrainingHeads, batch: dict[str, torch.Tensor], stage: StageConfig,
                  ids: PointerIds) -> tuple[torch.Tensor, dict]:
    features = model.vision_encoder(batch["pixel_values"], batch["modality_ids"])  # (V, N, T*D)
    image_embeds = model.projector(features)  # (V, N', Dlm)
    inputs_embeds = model.merge_image_embeds(batch["input_ids"], image_embeds)
    out = model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"],
                output_hidden_states=stage.pointer_weight > 0 or stage.cross_modal_match_weight > 0,
                output_attentions=reads_attention(stage))  # (B, S, V)
    lm = language_loss(out.logits, batch["labels"], ids.loc_first, slis.NUM_LOC_BINS, stage.loc_smoothing,
                       stage.loc_sigma_bins, loss_groups(batch, stage.loss_normalization))
    loss, parts = lm, {"lm": lm.item()}
    # A head whose weight is 0 is not computed at all (the answers stage): its gradient would be 0.
    if stage.aux_weight > 0:
        dense = aux_loss(heads(features), batch["aux_targets"], batch["aux_mask"])
        loss = loss + stage.aux_weight * dense
        parts["aux"] = dense.item()
    token_targets = (pool_to_tokens(batch["aux_targets"], model.projector)  # (V, N', AUX), shared below
                     if stage.token_aux_weight > 0 or stage.answer_attention_weight > 0 else None)
    if stage.token_aux_weight > 0:
        token_dense = aux_loss(heads.token_dense(image_embeds), token_targets, batch["aux_mask"])  # (V, N', AUX)
        loss = loss + stage.token_aux_weight * token_dense
        parts["token_aux"] = token_dense.item()
    boxes = (pointer_targets(batch["labels"], ids, image_embeds.shape[1], stage.pointer_coordinates)  # shared below
             if stage.pointer_weight > 0 or stage.attention_weight > 0 else None)
    if stage.pointer_weight > 0:
        pointer = pointer_loss(heads, out.hidden_states[-1], batch["labels"], ids, image_embeds.shape[1], boxes)
        loss = loss + stage.pointer_weight * pointer
        parts["pointer"] = pointer.item()
    if stage.attention_weight > 0:
        attend = attention_loss(out.attentions, batch["input_ids"], batch["labels"], ids, image_embeds.shape[1],
                                stage.attention_layers, boxes)
        loss = loss + stage.attention_weight * attend
        parts["attention"] = attend.item()
    if stage.cross_modal_align_weight > 0:
        align = cross_modal_alignment_loss(image_embeds, batch["co_registered_sar_views"],
                                           model.projector.position_embedding)
        loss = loss + stage.cross_modal_align_weight * align
        parts["cross_modal_align"] = align.item()
    if stage.cross_modal_match_weight > 0:
        match, look_across = cross_modal_match_loss(
            heads, out.hidden_states[-1], out.attentions, batch["input_ids"], batch["cross_modal_rows"],
            batch["cross_modal_same"], ids.image, image_embeds.shape[1], stage.match_attention_layers)
        loss = loss + stage.cross_modal_match_weight * (match + look_across)
        parts["cross_modal_match"] = match.item()
        parts["match_attention"] = look_across.item()
    if stage.answer_attention_weight > 0:
        look = answer_attention_loss(out.attentions, batch["input_ids"], batch["labels"], batch["asked_class"],
                                     token_targets, ids.image, stage.attention_layers)
        loss = loss + stage.answer_attention_weight * look
        parts["answer_attention"] = look.item()
    return loss, parts


def loss_groups(batch: dict[str, torch.Tensor], normalization: str) -> torch.Tensor | None:
    """The ``row_groups`` argument of :func:`language_loss` for a stage's ``loss_normalization``."""
    if normalization == "token":
        return None
    if normalization == "task":
        return batch["task_index"]
    if normalization == "example":
        return torch.arange(batch["task_index"].shape[0])
    raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, not {normalization!r}")


def reads_attention(stage: StageConfig) -> bool:
    """Whether the stage's losses read the decoder's attention weights (eager attention only)."""
    return stage.attention_weight > 0 or stage.answer_attention_weight > 0 or stage.cross_modal_match_weight > 0


@torch.no_grad()
def validation_losses(model, processor, examples: list[Example]) -> dict[str, float]:
    """Teacher-forced language loss per task on fixed held-out examples."""
    was_training = model.training
    model.eval()
    out = {}
    for task in dict.fromkeys(e.task for e in examples):
        chosen = [e for e in examples if e.task == task]
        batch = processor([Sample(views=e.views, instruction=e.instruction, answer=e.answer) for e in chosen],
                          with_labels=True, padding_side="right")
        out[task] = round(model(**batch).loss.item(), 4)
    model.train(was_training)
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, also for a state saved mid-stage before
    ``TrainingHeads.match`` existed: that head's parameters are the last of the stage's trainable list
    (the "aux" group comes last, the match head last in it) and start without moments."""
    saved_params = saved["param_groups"][0]["params"]
    now = len(optimizer.param_groups[0]["params"])
    if len(saved["param_groups"]) == 1 and len(saved_params) < now:
        saved = {**saved, "param_groups": [{**saved["param_groups"][0], "params": list(range(now))}]}
    optimizer.load_state_dict(saved)


def _lr_factor(step: int, stage: StageConfig) -> float:
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_state(out: Path, model, processor, aux_head, optimizer, stage_index: int, step: int, config: TrainConfig,
                log: list[dict], commit: str | None) -> None:
    tmp = out / "last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, processor, tmp / "model")
    torch.save({"aux": aux_head.state_dict(), "optimizer": optimizer.state_dict(),
                "stage_index": stage_index, "step": step}, tmp / "trainer.pt")
    (tmp / "train_config.json").write_text(json.dumps(dict(asdict(config), git_commit=commit), indent=1))
    (tmp / "log.json").write_text(json.dumps(log))
    shutil.rmtree(out / "last", ignore_errors=True)
    os.replace(tmp, out / "last")


def train(config: TrainConfig, out: Path, data_root: Path, progress: bool = True) -> Path:
    """Run (or resume) every stage; returns the final checkpoint folder ``OUT/final``."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()  # the code this process runs, even if the tree moves on while it trains
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model_config = EarthOneVisionConfig.from_preset(
        config.preset, **({"vision_stem": config.vision_stem} if config.vision_stem else {}))
    model = EarthOneVisionForConditionalGeneration(model_config)
    processor = EarthOneVisionProcessor(TextTokenizer.from_file(), model_config)
    aux_head = TrainingHeads(model_config.multi_level_dim, model_config.text_config.hidden_size,
                             model_config.image_tokens_per_view)
    init_for_training(model, processor.tokenizer)
    loc_ids = [processor.tokenizer.token_to_id(t) for t in slis.LOC_TOKENS]
    if loc_ids != list(range(loc_ids[0], loc_ids[0] + len(loc_ids))):
        raise ValueError("the tokenizer's location tokens must have consecutive ids (language_loss slices them)")
    pointer_ids = PointerIds.from_tokenizer(processor.tokenizer, model_config.image_token_id)
    start_stage, start_step, log, state = 0, 0, [], None
    resume = out / "last"
    if (resume / "trainer.pt").is_file():
        state = torch.load(resume / "trainer.pt", weights_only=False)
        model = EarthOneVisionForConditionalGeneration.from_pretrained(resume / "model")
        if model.config.vision_stem != model_config.vision_stem:
            raise ConfigError(f"{out} holds a run with vision_stem={model.config.vision_stem!r}, not "
                             f"{model_config.vision_stem!r}; resume it with the same options or use another --out")
        missing, unexpected = aux_head.load_state_dict(state["aux"], strict=False)
        if unexpected or any(not key.startswith("match.") for key in missing):
            raise ConfigError(f"{resume / 'trainer.pt'} holds training heads of another shape "
                              f"(missing {missing}, unexpected {unexpected}); use another --out")
        start_stage, start_step = state["stage_index"], state["step"]
        log = json.loads((resume / "log.json").read_text())
        where = (f"stage {config.stages[start_stage].name}, step {start_step}"
                 if start_stage < len(config.stages) else "the end: every stage is done")
        print(f"resuming {out} at {where}")
    if any(reads_attention(stage) for stage in config.stages):
        # attention_loss and answer_attention_loss read the decoder's softmax weights, which only
        # eager attention returns (not saved with the checkpoint: loading gives sdpa again).
        model.language_model.set_attn_implementation("eager")
    grid = model_config.grid_size
    factory = ExampleFactory(data_root, "train", model_config.image_size, model_config.vision_config.patch_size,
                             hit_uav_limit=config.hit_uav_limit)
    val_factory = ExampleFactory(data_root, "val", model_config.image_size, model_config.vision_config.patch_size,
                                 hit_uav_limit=config.hit_uav_limit)
    val_rng = random.Random(f"{config.seed}-validation")
    val_examples = [val_factory.sample(task, val_rng) for task in
                    dict.fromkeys(t for st in config.stages for t in st.task_weights)
                    for _ in range(config.validation_per_task)]
    # wall time counts across resumptions: the model card reports the whole run's
    started = time.time() - max((e.get("elapsed_s", 0.0) for e in log), default=0.0)
    for stage_index in range(start_stage, len(config.stages)):
        stage = config.stages[stage_index]
        groups = parameter_groups(model, aux_head)
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in stage.trainable)
        trainable = [p for name in stage.trainable for p in groups[name]]
        optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=0.01, betas=(0.9, 0.98))
        first = start_step if stage_index == start_stage else 0
        if first and state is not None:
            load_optimizer_state(optimizer, state["optimizer"])
        tasks = list(stage.task_weights)
        weights = [stage.task_weights[t] for t in tasks]
        model.train()
        if "stem" not in stage.trainable:
            freeze_batch_norm(model.vision_encoder)
        bar = tqdm(range(first, stage.steps), desc=stage.name, disable=not progress, mininterval=5)
        for step in bar:
            # Each step's data depends only on (seed, stage, step): resuming replays the same batches.
            rng = random.Random(f"{config.seed}-{stage.name}-{step}")
            examples = [factory.sample(rng.choices(tasks, weights)[0], rng) for _ in range(stage.batch_size)]
            batch = collate(examples, processor, grid)
            for group in optimizer.param_groups:
                group["lr"] = stage.lr * _lr_factor(step, stage)
            loss, parts = training_step(model, aux_head, batch, stage, pointer_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            if step % config.log_every == 0 or step == stage.steps - 1:
                log.append({"stage": stage.name, "step": step, "loss": loss.item(), **parts,
                            "elapsed_s": round(time.time() - started, 1)})
                bar.set_postfix({name: f"{value:.3f}" for name, value in parts.items()})
            if (step + 1) % config.validate_every == 0:
                log.append({"stage": stage.name, "step": step, "val_loss": validation_losses(model, processor, val_examples)})
            if (step + 1) % config.save_every == 0:
                _save_state(out, model, processor, aux_head, optimizer, stage_index, step + 1, config, log, commit)
        log.append({"stage": stage.name, "step": stage.steps, "val_loss": validation_losses(model, processor, val_examples),
                    "elapsed_s": round(time.time() - started, 1)})
        model.eval()
        save_checkpoint(model, processor, out / f"stage-{stage.name}")
        _save_state(out, model, processor, aux_head, optimizer, stage_index + 1, 0, config, log, commit)
    final = out / "final"
    save_checkpoint(model, processor, final)
    (final / "train_log.json").write_text(json.dumps(log))
    return final
