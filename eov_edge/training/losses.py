"""The losses of a training step: the language loss and the training-only heads' terms, as a registry.

Every term is a :class:`LossTerm`: the :class:`StageConfig <eov_edge.training.train.StageConfig>`
field that weighs it, what of the decoder's output it reads (last-layer states, attention weights),
and how it is computed from one :class:`LossContext`. :func:`training_step` runs the forward pass
once and adds the terms whose weight is above 0 in :data:`TRAINING_LOSSES` order (a term whose weight
is 0 is not computed at all: its gradient would be 0). Targets two terms share (the pooled token
targets, the box pointer targets) are computed once per step, on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from eov_edge.core import slis
from eov_edge.core.tasks import TASKS
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.training.data.examples import AUX_CHANNELS, OBJECT_CLASSES

LOSS_NORMALIZATIONS = ("token", "task", "example")


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
    its token-level object head found the objects; measured in nano-v6,
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


@dataclass(frozen=True)
class LossTotals:
    """What the language loss of a part of a global batch divides by, so that the parts' losses
    (micro-batches of gradient accumulation, data-parallel ranks) sum to the whole batch's.

    group_tokens (G,): the global batch's supervised tokens per group; group_rows (G,): its rows with
    a supervised token per group; rows: all such rows. Groups as ``row_groups``: one group for token
    normalization, tasks, or (per-example normalization) this part's own rows, which no other part
    holds (group_tokens then the row's own count, group_rows 1).
    """

    group_tokens: torch.Tensor
    group_rows: torch.Tensor
    rows: float


def language_loss(logits: torch.Tensor, labels: torch.Tensor, loc_first: int, num_loc: int,
                  smoothing: float, sigma_bins: float, row_groups: torch.Tensor | None = None,
                  totals: LossTotals | None = None) -> torch.Tensor:
    """Next-token cross-entropy, Gaussian-smoothed over location bins where the label is one.

    logits (B, S, V), labels (B, S) with -100 on unsupervised positions. Without ``row_groups``:
    the mean over supervised tokens, as transformers' causal-LM loss (which this equals when
    ``smoothing`` is 0). With ``row_groups`` (B,) ints: each group's token mean, weighted by its
    share of the rows, so a group's weight is its number of examples, not of answer tokens. Groups
    = tasks: a task mixture weight means what it says, where per token a 2-token VQA answer
    carried ~1/35 of a 70-token detection list (docs/data.md); groups = rows: per-example mean.
    With ``totals``: this part's share of the global batch's loss (:class:`LossTotals`).
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
    if totals is not None:
        groups = torch.zeros_like(targets[:, 0]) if row_groups is None else row_groups.to(targets.device)
        groups = groups[valid.nonzero()[:, 0]]  # (M,)
        group_tokens, group_rows = (t.to(per_token.device) for t in (totals.group_tokens, totals.group_rows))
        token_sum = per_token.new_zeros(group_tokens.shape[0]).index_add_(0, groups, per_token)  # (G,)
        present = group_tokens > 0
        weight = group_rows[present] / totals.rows / group_tokens[present]  # (G',)
        return (weight * token_sum[present]).sum()
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


def loss_groups(batch: dict[str, torch.Tensor], normalization: str) -> torch.Tensor | None:
    """The ``row_groups`` argument of :func:`language_loss` for a stage's ``loss_normalization``."""
    if normalization == "token":
        return None
    if normalization == "task":
        return batch["task_index"]
    if normalization == "example":
        return torch.arange(batch["task_index"].shape[0])
    raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, not {normalization!r}")


@dataclass
class LossContext:
    """What one step's loss terms read: the batch, the stage, and the forward pass's intermediates."""

    model: nn.Module
    heads: TrainingHeads
    batch: dict[str, torch.Tensor]
    stage: object  # a StageConfig: its weights and layer choices
    ids: PointerIds
    features: torch.Tensor  # (V, N, T*D) the encoder's multi-level features
    image_embeds: torch.Tensor  # (V, N', Dlm) the projector output
    out: object  # the decoder's output: logits, and hidden_states / attentions when a term reads them

    @property
    def tokens_per_view(self) -> int:
        return self.image_embeds.shape[1]

    @cached_property
    def token_targets(self) -> torch.Tensor:
        """(V, N', AUX) the patch targets pooled onto the merged image tokens."""
        return pool_to_tokens(self.batch["aux_targets"], self.model.projector)

    @cached_property
    def boxes(self) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """:func:`pointer_targets` of the batch's answers at the stage's supervised coordinates."""
        return pointer_targets(self.batch["labels"], self.ids, self.tokens_per_view, self.stage.pointer_coordinates)


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the training loss.

    ``compute`` returns the term's parts by name (logged each step); the term is their sum, times the
    stage's ``weight`` field.
    """

    name: str
    weight: str  # the StageConfig field
    compute: Callable[[LossContext], dict[str, torch.Tensor]]
    reads_hidden: bool = False  # the decoder's last-layer states
    reads_attention: bool = False  # the decoder's attention weights (eager attention)


def _dense(c: LossContext) -> dict[str, torch.Tensor]:
    return {"aux": aux_loss(c.heads(c.features), c.batch["aux_targets"], c.batch["aux_mask"])}


def _token_dense(c: LossContext) -> dict[str, torch.Tensor]:
    logits = c.heads.token_dense(c.image_embeds)  # (V, N', AUX)
    return {"token_aux": aux_loss(logits, c.token_targets, c.batch["aux_mask"])}


def _pointer(c: LossContext) -> dict[str, torch.Tensor]:
    return {"pointer": pointer_loss(c.heads, c.out.hidden_states[-1], c.batch["labels"], c.ids, c.tokens_per_view,
                                    c.boxes)}


def _attention(c: LossContext) -> dict[str, torch.Tensor]:
    return {"attention": attention_loss(c.out.attentions, c.batch["input_ids"], c.batch["labels"], c.ids,
                                        c.tokens_per_view, c.stage.attention_layers, c.boxes)}


def _cross_modal_align(c: LossContext) -> dict[str, torch.Tensor]:
    return {"cross_modal_align": cross_modal_alignment_loss(c.image_embeds, c.batch["co_registered_sar_views"],
                                                            c.model.projector.position_embedding)}


def _cross_modal_match(c: LossContext) -> dict[str, torch.Tensor]:
    match, look_across = cross_modal_match_loss(
        c.heads, c.out.hidden_states[-1], c.out.attentions, c.batch["input_ids"], c.batch["cross_modal_rows"],
        c.batch["cross_modal_same"], c.ids.image, c.tokens_per_view, c.stage.match_attention_layers)
    return {"cross_modal_match": match, "match_attention": look_across}


def _answer_attention(c: LossContext) -> dict[str, torch.Tensor]:
    return {"answer_attention": answer_attention_loss(c.out.attentions, c.batch["input_ids"], c.batch["labels"],
                                                      c.batch["asked_class"], c.token_targets, c.ids.image,
                                                      c.stage.attention_layers)}


# In the order they are added to the language loss (the order fixes the float sum, so runs repeat).
TRAINING_LOSSES: tuple[LossTerm, ...] = (
    LossTerm("aux", "aux_weight", _dense),
    LossTerm("token_aux", "token_aux_weight", _token_dense),
    LossTerm("pointer", "pointer_weight", _pointer, reads_hidden=True),
    LossTerm("attention", "attention_weight", _attention, reads_attention=True),
    LossTerm("cross_modal_align", "cross_modal_align_weight", _cross_modal_align),
    LossTerm("cross_modal_match", "cross_modal_match_weight", _cross_modal_match, reads_hidden=True,
             reads_attention=True),
    LossTerm("answer_attention", "answer_attention_weight", _answer_attention, reads_attention=True),
)


def active_losses(stage) -> list[LossTerm]:
    """The stage's terms with a weight above 0."""
    return [term for term in TRAINING_LOSSES if getattr(stage, term.weight) > 0]


def reads_attention(stage) -> bool:
    """Whether the stage's losses read the decoder's attention weights (eager attention only)."""
    return any(term.reads_attention for term in active_losses(stage))


def loss_totals(batches: list[dict[str, torch.Tensor]], normalization: str, all_reduce=None) -> list[LossTotals]:
    """The :class:`LossTotals` of each of ``batches`` (this process's micro-batches), counted over
    every part of the global batch: ``all_reduce`` sums a tensor over the data-parallel ranks."""
    # one group per task kind (the same vector length on every rank), or one group for all
    tasks = len(TASKS) if normalization == "task" else 1
    counts = torch.zeros(2 * tasks + 1, dtype=torch.float64)  # tokens per group, rows per group, rows
    for batch in batches:
        valid = batch["labels"][:, 1:] != -100  # (B, S-1)
        rows = valid.any(1)  # (B,)
        groups = batch["task_index"] if normalization == "task" else torch.zeros_like(rows, dtype=torch.long)
        counts[:tasks] += torch.bincount(groups, weights=valid.sum(1).double(), minlength=tasks)
        counts[tasks:-1] += torch.bincount(groups[rows], minlength=tasks).double()
        counts[-1] += rows.sum()
    if all_reduce is not None:
        counts = all_reduce(counts)
    tokens, group_rows, rows = counts[:tasks].float(), counts[tasks:-1].float(), float(counts[-1])
    if normalization != "example":
        return [LossTotals(tokens, group_rows, rows) for _ in batches]
    out = []
    for batch in batches:  # each row its own group: its own tokens, one row
        valid = batch["labels"][:, 1:] != -100
        out.append(LossTotals(valid.sum(1).float(), valid.any(1).float(), rows))
    return out


def training_step(model, heads: TrainingHeads, batch: dict[str, torch.Tensor], stage,
                  ids: PointerIds, totals: LossTotals | None = None,
                  term_scale: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The weighted loss of one batch and its parts (floats, for the log).

    totals: the batch is a part of a larger one (micro-batch, rank): the language loss is this part's
        share of the whole's (:class:`LossTotals`); ``term_scale`` multiplies the heads' terms (1 /
        micro-batches: their mean over the parts, exact where the parts hold equal numbers of targets).
    """
    terms = active_losses(stage)
    features = model.vision_encoder(batch["pixel_values"], batch["modality_ids"])  # (V, N, T*D)
    image_embeds = model.projector(features)  # (V, N', Dlm)
    inputs_embeds = model.merge_image_embeds(batch["input_ids"], image_embeds)
    out = model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"],
                output_hidden_states=any(term.reads_hidden for term in terms),
                output_attentions=any(term.reads_attention for term in terms))  # logits (B, S, V)
    lm = language_loss(out.logits, batch["labels"], ids.loc_first, slis.NUM_LOC_BINS, stage.loc_smoothing,
                       stage.loc_sigma_bins, loss_groups(batch, stage.loss_normalization), totals)
    loss, parts = lm, {"lm": lm.item()}
    context = LossContext(model, heads, batch, stage, ids, features, image_embeds, out)
    for term in terms:
        values = term.compute(context)
        total = None
        for name, value in values.items():
            total = value if total is None else total + value
            parts[name] = value.item()
        loss = loss + term_scale * getattr(stage, term.weight) * total
    return loss, parts
