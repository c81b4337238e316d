"""SLIS: spatial outputs (boxes, oriented quads, polygons, points) as autoregressive tokens.

Grammar (one coordinate = one token = one decode step)::

    answer := item ((", " | "; ") item)*  [free text around items is kept as text]
    item   := [view_tag] [label] shape
    shape  := "<box>"  loc{4}     "</box>"     x1 y1 x2 y2 (x1 <= x2, y1 <= y2)
            | "<quad>" loc{8}     "</quad>"    4 corners, x y each
            | "<poly>" loc{2n}    "</poly>"    n >= 3 vertices
            | "<pt>"   loc{2}     "</pt>"
    loc    := "<loc_0>" .. "<loc_999>"         bin of the view's width (x) or height (y)
    view_tag := "<t0>" .. "<t15>"

A coordinate ``v`` on an axis of length ``L`` pixels goes to bin ``floor(v / L * 1000)`` (clipped
to 0..999) and comes back as the bin centre, so a round trip is exact up to ``L / 2000`` pixels.

:func:`parse` is total: whatever text a model emits, it returns the objects it could read and a list
of problems, and never raises. No torch here: the device runtime decodes with this module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

SLIS_VERSION = 1
NUM_LOC_BINS = 1000
MAX_VIEWS = 16

ShapeKind = Literal["box", "quad", "poly", "pt"]
SHAPE_KINDS: tuple[ShapeKind, ...] = ("box", "quad", "poly", "pt")
_FIXED_LOCS: dict[str, int] = {"box": 4, "quad": 8, "pt": 2}
MIN_POLY_VERTICES = 3

LOC_TOKENS: tuple[str, ...] = tuple(f"<loc_{i}>" for i in range(NUM_LOC_BINS))
SHAPE_TOKENS: tuple[str, ...] = tuple(t for k in SHAPE_KINDS for t in (f"<{k}>", f"</{k}>"))
VIEW_TOKENS: tuple[str, ...] = tuple(f"<t{i}>" for i in range(MAX_VIEWS))

_TOKEN_RE = re.compile(r"<(/?)(box|quad|poly|pt)>|<loc_(\d+)>|<t(\d+)>")
_SEPARATORS = " \t\n,;"


def quantize(value: float, extent: float) -> int:
    """Pixel coordinate on an axis of ``extent`` pixels -> location bin 0..999."""
    if not extent > 0:
        raise ValueError(f"axis extent must be positive, got {extent}")
    if not math.isfinite(value):
        raise ValueError(f"coordinate must be finite, got {value}")
    return min(NUM_LOC_BINS - 1, max(0, int(math.floor(value / extent * NUM_LOC_BINS))))


def dequantize(bin_index: int, extent: float) -> float:
    """Location bin -> pixel coordinate of the bin centre."""
    return (bin_index + 0.5) * extent / NUM_LOC_BINS


@dataclass(frozen=True)
class SpatialObject:
    """One parsed or to-be-serialized shape, coordinates as location bins (x, y interleaved)."""

    kind: ShapeKind
    bins: tuple[int, ...]
    label: str | None = None
    view: int | None = None

    @classmethod
    def from_pixels(
        cls,
        kind: ShapeKind,
        points: list[tuple[float, float]] | tuple[tuple[float, float], ...],
        width: float,
        height: float,
        label: str | None = None,
        view: int | None = None,
    ) -> "SpatialObject":
        """Quantize pixel points (x, y); a box is given as its two corners (x1, y1), (x2, y2)."""
        bins = tuple(b for x, y in points for b in (quantize(x, width), quantize(y, height)))
        if kind == "box":
            x1, y1, x2, y2 = bins
            bins = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        obj = cls(kind, bins, label, view)
        problem = obj.shape_problem()
        if problem:
            raise ValueError(problem)
        return obj

    def points(self, width: float, height: float) -> list[tuple[float, float]]:
        """Pixel coordinates (x, y) of the bin centres on a view of ``width`` x ``height``."""
        return [
            (dequantize(self.bins[i], width), dequantize(self.bins[i + 1], height))
            for i in range(0, len(self.bins), 2)
        ]

    def box(self, width: float, height: float) -> tuple[float, float, float, float]:
        """Axis-aligned bounding box (x1, y1, x2, y2) in pixels, for any shape kind."""
        pts = self.points(width, height)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return min(xs), min(ys), max(xs), max(ys)

    def shape_problem(self) -> str | None:
        """Why the bins don't make a valid shape of this kind, or None."""
        n = len(self.bins)
        if self.kind in _FIXED_LOCS and n != _FIXED_LOCS[self.kind]:
            return f"<{self.kind}> needs {_FIXED_LOCS[self.kind]} locations, got {n}"
        if self.kind == "poly" and (n % 2 or n < 2 * MIN_POLY_VERTICES):
            return f"<poly> needs an even number >= {2 * MIN_POLY_VERTICES} of locations, got {n}"
        if any(not 0 <= b < NUM_LOC_BINS for b in self.bins):
            return f"location bin out of range 0..{NUM_LOC_BINS - 1} in {self.bins}"
        if self.label is not None and ("<" in self.label or ">" in self.label):
            return f"label {self.label!r} may not contain '<' or '>'"
        if self.view is not None and not 0 <= self.view < MAX_VIEWS:
            return f"view tag {self.view} out of range 0..{MAX_VIEWS - 1}"
        return None

    def to_text(self) -> str:
        prefix = (f"<t{self.view}>" if self.view is not None else "") + (
            f"{self.label} " if self.label else ""
        )
        locs = "".join(LOC_TOKENS[b] for b in self.bins)
        return f"{prefix}<{self.kind}>{locs}</{self.kind}>"


def serialize(objects: list[SpatialObject] | tuple[SpatialObject, ...], separator: str = ", ") -> str:
    """SLIS text for ``objects``; raises ValueError on an invalid object (a bug in the caller)."""
    for obj in objects:
        problem = obj.shape_problem()
        if problem:
            raise ValueError(problem)
    return separator.join(obj.to_text() for obj in objects)


@dataclass
class ParseResult:
    """What :func:`parse` could read: shapes, the remaining free text, and what was wrong."""

    objects: list[SpatialObject] = field(default_factory=list)
    text: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


NEVER_CLOSED = "never closed; dropped it"  # the problem of a shape still open when the text ends


def problems_before_cut(problems: list[str]) -> list[str]:
    """``problems`` without a last shape left open: where only the token budget can leave one open
    (grammar-constrained decoding), that is a cut answer, not a malformed one."""
    return problems[:-1] if problems and problems[-1].endswith(NEVER_CLOSED) else list(problems)


def parse(text: str) -> ParseResult:
    """Read every well-formed shape in ``text``; report (never raise on) malformed ones.

    A shape with the wrong number of locations, an out-of-range bin, a stray location or closing
    tag, or a shape left open is skipped and described in ``problems``. A box given with its
    corners swapped is kept with sorted corners and reported.
    """
    result = ParseResult()
    free_text: list[str] = []
    pending_label: list[str] = []
    pending_view: int | None = None
    open_kind: str | None = None
    open_bins: list[int] = []
    open_ok = True
    position = 0

    def flush_label() -> str | None:
        label = "".join(pending_label).strip(_SEPARATORS)
        pending_label.clear()
        return label or None

    for match in _TOKEN_RE.finditer(text):
        between = text[position : match.start()]
        position = match.end()
        closing, kind, loc, view = match.groups()
        if open_kind is not None:
            if between.strip():
                result.problems.append(f"text {between.strip()!r} inside <{open_kind}>")
                open_ok = False
        else:
            pending_label.append(between)

        if kind is not None and not closing:  # an opening shape tag
            if open_kind is not None:
                result.problems.append(f"<{kind}> opened inside unclosed <{open_kind}>; dropped it")
            open_kind, open_bins, open_ok = kind, [], True
            label = flush_label()
            current_label, current_view = label, pending_view
            pending_view = None
        elif kind is not None:  # a closing shape tag
            if open_kind is None:
                result.problems.append(f"</{kind}> without an opening tag")
                free_text.append(flush_label() or "")
                continue
            if kind != open_kind:
                result.problems.append(f"<{open_kind}> closed by </{kind}>; dropped it")
            elif open_ok:
                if current_label is not None and ("<" in current_label or ">" in current_label):
                    result.problems.append(f"label {current_label!r} holds '<' or '>'; kept it as text")
                    free_text.append(current_label)
                    current_label = None
                bins = tuple(open_bins)
                if open_kind == "box" and len(bins) == 4 and (bins[0] > bins[2] or bins[1] > bins[3]):
                    result.problems.append(f"box corners swapped in {bins}; sorted them")
                    x1, y1, x2, y2 = bins
                    bins = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
                obj = SpatialObject(open_kind, bins, current_label, current_view)  # type: ignore[arg-type]
                problem = obj.shape_problem()
                if problem:
                    result.problems.append(problem + "; dropped it")
                else:
                    result.objects.append(obj)
            open_kind, open_bins = None, []
        elif loc is not None:
            value = int(loc) if len(loc) <= 6 else NUM_LOC_BINS  # huge digit runs: out of range
            if open_kind is None:
                result.problems.append(f"<loc_{loc}> outside a shape; ignored")
            elif value >= NUM_LOC_BINS:
                result.problems.append(f"<loc_{loc}> out of range 0..{NUM_LOC_BINS - 1}")
                open_ok = False
            else:
                open_bins.append(value)
        else:  # a view tag
            value = int(view) if len(view) <= 6 else MAX_VIEWS
            if open_kind is not None:
                result.problems.append(f"<t{view}> inside <{open_kind}>")
                open_ok = False
            elif value >= MAX_VIEWS:
                result.problems.append(f"<t{view}> out of range 0..{MAX_VIEWS - 1}; ignored")
            else:
                free_text.append(flush_label() or "")
                pending_view = value

    tail = text[position:]
    if open_kind is not None:
        result.problems.append(f"<{open_kind}> {NEVER_CLOSED}")
    else:
        pending_label.append(tail)
    free_text.append(flush_label() or "")
    result.text = " ".join(t for t in free_text if t).strip()
    return result
