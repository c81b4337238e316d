"""A model's answer to one sample, from its generated token ids: the one answer type of the runtime
and of the PyTorch reference.

    answer = answer_from_ids(ids, probs, tokenizer, eos=..., pad=...)
    answer.text, answer.parsed.objects, answer.problems, answer.cut_at_budget

The runtime adds the shapes placed on the views (``detections``), the task and what was read
(``inputs``); the PyTorch reference has no token probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from eov_edge.core import slis


@dataclass
class Answer:
    """The model's answer to one sample."""

    text: str  # special tokens kept, so SLIS shapes survive; EOS and padding removed
    token_ids: list[int]
    token_probs: list[float] = field(default_factory=list)  # the chosen tokens' probabilities (runtime)
    # SLIS shapes placed on the views: eov_edge.runtime.geo.Detection (runtime)
    detections: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # SLIS parse problems (malformed output)
    task: str | None = None  # the task kind's name
    # per view: its sources, band set, and which band filled which canvas slot and what decided it
    inputs: list[dict] = field(default_factory=list)
    # the answer ran out of new tokens before its end token; a shape it had begun is dropped (not
    # counted as malformed): raise max_new_tokens to get it
    cut_at_budget: bool = False
    parsed: slis.ParseResult | None = field(default=None, repr=False, compare=False)  # the text's SLIS shapes

    def to_dict(self) -> dict:
        return {"task": self.task, "text": self.text, "token_ids": self.token_ids,
                "detections": [d.to_dict() for d in self.detections], "problems": self.problems,
                "cut_at_token_budget": self.cut_at_budget, "inputs": self.inputs}

    def whole_text(self) -> str:
        """The text to show: where the token budget cut it, up to the end of its last whole shape
        (``text`` itself keeps every generated token)."""
        if not self.cut_at_budget:
            return self.text
        last_open = max((m.start() for m in re.finditer(r"<(box|quad|poly|pt)>", self.text)), default=-1)
        last_close = max((m.end() for m in re.finditer(r"</(box|quad|poly|pt)>", self.text)), default=0)
        # cut inside a shape: drop it and its label; cut elsewhere (a long caption): the text as it is
        return self.text[:last_close] if last_open > last_close else self.text


def answer_from_ids(ids: Sequence[int], probs: Sequence[float] | None, tokenizer, eos: int, pad: int) -> Answer:
    """The answer in generated ``ids`` (and their ``probs``, where known): cut at the first ``eos``,
    padding dropped, decoded and parsed. An answer the token budget ended (no ``eos``) inside a shape
    is cut, not malformed: that last open shape is not a problem."""
    kept: list[tuple[int, float]] = []
    ended = False
    for token, prob in zip((int(i) for i in ids), probs if probs is not None else [0.0] * len(ids)):
        if token == eos:
            ended = True
            break
        if token != pad:
            kept.append((token, float(prob)))
    token_ids = [t for t, _ in kept]
    text = tokenizer.decode(token_ids)
    parsed = slis.parse(text)
    problems = list(parsed.problems) if ended else slis.problems_before_cut(parsed.problems)
    return Answer(text, token_ids, [p for _, p in kept] if probs is not None else [], problems=problems,
                  cut_at_budget=not ended, parsed=parsed)
