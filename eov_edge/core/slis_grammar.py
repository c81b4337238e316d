"""Grammar-constrained decoding for SLIS: a decoder can only emit well-formed shapes.

Greedy decoding picks the most likely token, which for a small or half-trained model can be a
location token outside any shape, text inside a box, a box closed after three coordinates, or
x2 < x1. :class:`SlisGrammar` tracks, per batch row, where the answer stands in the grammar of
:mod:`eov_edge.core.slis` and masks the logits of every token that would break it:

- outside a shape: no location token and no closing tag;
- inside ``<box>``/``<quad>``/``<pt>``: location tokens until the shape has its count, then only
  its closing tag; in a box, x2 >= x1 and y2 >= y1;
- inside ``<poly>``: location tokens, and the closing tag once there are >= 3 whole vertices.

The mask only removes options. One choice is the grammar's own (``expected_locations``, on by
default): where the next token must be a location of a box, quad or point, it is the mean bin of
the model's distribution over the legal bins, rounded, not its argmax. A coordinate is ordinal and
the model is trained against a Gaussian over neighbouring bins (``eov_edge.training.losses.language_loss``),
so its distribution is a density over position; its argmax is unstable where that density is broad,
and on the shipped nano checkpoint 42% of greedy grounding boxes were ``<loc_0>`` x4 (a spike at
bin 0 beating a broad bump elsewhere). Decoding the integral of the distribution is what
Distribution Focal Loss detectors (GFL, YOLOv8) do with their per-edge bin distributions. The
chosen location's reported probability (``location_mass``, which the runtime reports and detection
scores multiply) is the model's mass within +-10 bins of it (the sigma of the training target): how
sure the model is of the position, not of one bin. A polygon's vertices stay argmax, where the
closing tag competes with the next vertex (no task emits polygons yet). PyTorch ``generate()``
(:class:`eov_edge.model.modeling.SlisLogitsProcessor`) and the device runtime
(:mod:`eov_edge.runtime.generation`) both use this class, so their tokens stay identical. It works
on numpy arrays and torch tensors alike (slices and scalar reads, and a float64 numpy copy of the
location logits for their mean); no torch import here.

The token ids are fixed by :data:`eov_edge.core.prompt.SPECIAL_TOKENS` (every tokenizer is checked
against that table on load). A shape cut off by ``max_new_tokens`` stays open: that is a length
limit, not a grammar choice, and :func:`eov_edge.core.slis.parse` reports it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from eov_edge.core import slis
from eov_edge.core.prompt import SPECIAL_TOKENS

LOC_FIRST = SPECIAL_TOKENS.index(slis.LOC_TOKENS[0])
LOC_END = LOC_FIRST + slis.NUM_LOC_BINS  # exclusive
OPEN_IDS: dict[int, str] = {SPECIAL_TOKENS.index(f"<{k}>"): k for k in slis.SHAPE_KINDS}
CLOSE_IDS: dict[str, int] = {k: SPECIAL_TOKENS.index(f"</{k}>") for k in slis.SHAPE_KINDS}
FIXED_LOCS: dict[str, int] = {"box": 4, "quad": 8, "pt": 2}
NEG_INF = float("-inf")


class SlisGrammar:
    """Per-row SLIS state over a batch of answers being decoded; see the module docstring."""

    def __init__(self, batch: int, expected_locations: bool = True) -> None:
        self.open_kind: list[str | None] = [None] * batch
        self.bins: list[list[int]] = [[] for _ in range(batch)]
        self.expected_locations = expected_locations
        self.location_mass: dict[int, float] = {}  # row -> mass near the chosen bin, last constrain()

    def advance(self, token_ids: Sequence[int]) -> None:
        """Record one chosen token per row."""
        for row, token in enumerate(token_ids):
            token = int(token)
            kind = self.open_kind[row]
            if token in OPEN_IDS and kind is None:
                self.open_kind[row], self.bins[row] = OPEN_IDS[token], []
            elif kind is not None and token == CLOSE_IDS[kind]:
                self.open_kind[row], self.bins[row] = None, []
            elif kind is not None and LOC_FIRST <= token < LOC_END:
                self.bins[row].append(token - LOC_FIRST)

    def constrain(self, logits: Any, rows: Sequence[int] | None = None) -> Any:
        """Set the logits (B, V) of illegal next tokens to -inf, in place; returns ``logits``.

        ``rows``: only these rows (e.g. the unfinished ones); all by default.
        """
        self.location_mass = {}
        for row in range(len(self.open_kind)) if rows is None else rows:
            kind = self.open_kind[row]
            if kind is None:
                logits[row, LOC_FIRST:LOC_END] = NEG_INF
                for close in CLOSE_IDS.values():
                    logits[row, close] = NEG_INF
                continue
            count, close = len(self.bins[row]), CLOSE_IDS[kind]
            if kind in FIXED_LOCS and count >= FIXED_LOCS[kind]:
                keep = float(logits[row, close])
                logits[row, :] = NEG_INF
                logits[row, close] = keep
                continue
            may_close = kind == "poly" and count >= 2 * slis.MIN_POLY_VERTICES and count % 2 == 0
            keep = float(logits[row, close])
            lowest = LOC_FIRST
            if kind == "box" and count >= 2:  # x2 >= x1, y2 >= y1
                lowest += self.bins[row][count - 2]
            if self.expected_locations and kind in FIXED_LOCS:
                offset, self.location_mass[row] = expected_bin(logits[row, lowest:LOC_END], with_mass=True)
                chosen = lowest + offset
                logits[row, :] = NEG_INF
                logits[row, chosen] = 0.0
                continue
            logits[row, :lowest] = NEG_INF
            logits[row, LOC_END:] = NEG_INF
            if may_close:
                logits[row, close] = keep
        return logits


LOCATION_MASS_RADIUS = 10  # bins: the sigma of the training target (StageConfig.loc_sigma_bins)


def expected_bin(logits: Any, with_mass: bool = False) -> Any:
    """Index of the mean of softmax(``logits``) (a 1-D numpy array or torch tensor), rounded half up;
    with ``with_mass`` also the probability within ``LOCATION_MASS_RADIUS`` bins of it.

    float64 throughout, so PyTorch and the runtime round the same mean the same way."""
    if hasattr(logits, "detach"):  # a torch tensor (no torch import here)
        logits = logits.detach().cpu().double().numpy()
    values = np.asarray(logits, dtype=np.float64)
    weights = np.exp(values - values.max())
    total = weights.sum()
    index = min(len(values) - 1, int(np.floor(float((weights * np.arange(len(values))).sum() / total) + 0.5)))
    if not with_mass:
        return index
    near = weights[max(0, index - LOCATION_MASS_RADIUS) : index + LOCATION_MASS_RADIUS + 1].sum()
    return index, float(near / total)
