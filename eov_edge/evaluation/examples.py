"""Held-out examples and sets of them: what every scorer, the accuracy gate and calibration read.

An :class:`Example` is one question about one or more views with its reference answer, in the
form the scorer takes (``answer`` text and ``target`` ground truth in canvas pixels). Producers:
the user's JSONL held-out files (:mod:`eov_edge.evaluation.heldout`), the pack shipped with the
project (``core.paths.heldout_pack``), and the training data factory over the project's data folder.
Views are read when asked for (:meth:`Example.read_views`), so a set of thousands of examples
costs its answers' memory, not its images'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from eov_edge.core.raster import View


@dataclass
class Example:
    task: str
    views: list[View]  # read already (the data factory), or [] until read_views (held-out files)
    instruction: str
    answer: str  # the reference answer as the model is trained to write it
    target: dict  # ground truth for metrics, in canvas pixels
    source: str  # where the example came from (a file, a scene)
    aux: list[np.ndarray | None] = field(default_factory=list)  # per view (grid, grid, AUX) or None
    # reads the views at a square canvas size (held-out files); None: ``views`` are the views
    loader: Callable[[int], list[View]] | None = field(default=None, repr=False, compare=False)
    files: tuple[str, ...] = ()  # every file the views are read from (calibration must not share one)

    def read_views(self, size: int) -> list[View]:
        """The views on a ``size`` x ``size`` canvas (read now from files, or the ones held)."""
        if self.loader is not None:
            return self.loader(size)
        return self.views


@dataclass
class ExampleSet:
    """Held-out examples, and the examples an image-blind baseline is fitted on (their answers
    and targets only; the set's own examples where no others are given)."""

    examples: list[Example]
    baseline_examples: list[Example]
    name: str  # what the set is, for reports: a file, "shipped pack", a data folder
    provenance: dict = field(default_factory=dict)  # file and its sha256, seed, ... for reports

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(e.task for e in self.examples))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.examples:
            out[e.task] = out.get(e.task, 0) + 1
        return out

    def limited(self, per_task: int | None) -> "ExampleSet":
        """At most the first ``per_task`` examples of each task (None: all)."""
        if per_task is None:
            return self
        seen: dict[str, int] = {}
        kept = []
        for e in self.examples:
            seen[e.task] = seen.get(e.task, 0) + 1
            if seen[e.task] <= per_task:
                kept.append(e)
        return ExampleSet(kept, self.baseline_examples, self.name, dict(self.provenance, per_task=per_task))

    def without_files(self, files) -> tuple["ExampleSet", int]:
        """The set without any example that reads one of ``files`` (compared by file name, as the
        calibration samples are copies); and how many were dropped."""
        names = {Path(f).name for f in files} | {Path(f).parent.name for f in files}
        kept = [e for e in self.examples
                if Path(e.source).name not in names and not any(Path(f).name in names for f in e.files)]
        return ExampleSet(kept, self.baseline_examples, self.name, self.provenance), len(self.examples) - len(kept)


__all__ = ["Example", "ExampleSet"]
