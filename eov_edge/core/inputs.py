"""Model inputs as numpy arrays: prompt building, tokenization, image-token expansion, padding.

Training (through :mod:`eov_edge.model.processor`, which only wraps these arrays as tensors) and the
device runtime build their inputs with this one function, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from eov_edge.core.bands import MODALITY_INDEX, NUM_CANVAS_SLOTS
from eov_edge.core.errors import PromptError, ViewMismatchError
from eov_edge.core.prompt import (
    EOS,
    build_prompt,
    check_image_tags,
    expand_image_tokens,
)
from eov_edge.core.raster import View
from eov_edge.core.tokenizer import TextTokenizer

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, image tokens, padding)


@dataclass
class Sample:
    """One question about one or more views.

    Give ``instruction`` (the views' tags are added for you) or a full ``prompt`` that already
    holds one ``<image>`` per view; ``answer`` is the target text for training.
    """

    views: Sequence[View]
    instruction: str | None = None
    prompt: str | None = None
    answer: str | None = None
    meta: dict = field(default_factory=dict)

    def prompt_text(self) -> str:
        if (self.instruction is None) == (self.prompt is None):
            raise PromptError("give a Sample either instruction=... or prompt=..., not both or neither")
        if self.prompt is not None:
            check_image_tags(self.prompt, len(self.views))
            return self.prompt
        return build_prompt(self.instruction, [view.modality for view in self.views])


@dataclass(frozen=True)
class InputSpec:
    """What the model expects of its inputs (from its config or an export manifest)."""

    image_size: int
    image_tokens_per_view: int
    max_context: int


def build_batch(
    samples: Sequence[Sample],
    tokenizer: TextTokenizer,
    spec: InputSpec,
    with_labels: bool = False,
    padding_side: Literal["left", "right"] = "left",
    max_new_tokens: int = 0,
) -> dict[str, np.ndarray]:
    """Arrays for the model: input_ids, attention_mask (B, S) i64; pixel_values (V, 16, H, W) f32;
    modality_ids (V,) i64 with views in sample then prompt order; labels (B, S) i64 if asked.

    Left padding (the default) suits generation; the prompt plus ``max_new_tokens`` must fit the
    context.
    """
    if not samples:
        raise ValueError("build_batch needs at least one sample")
    rows: list[list[int]] = []
    label_rows: list[list[int]] = []
    canvases: list[np.ndarray] = []
    modality_ids: list[int] = []
    expected = (NUM_CANVAS_SLOTS, spec.image_size, spec.image_size)
    for index, sample in enumerate(samples):
        if not sample.views:
            raise ViewMismatchError(f"sample {index} has no views")
        for view_index, view in enumerate(sample.views):
            if view.canvas.shape != expected:
                raise ViewMismatchError(
                    f"sample {index}, view {view_index}: canvas is {view.canvas.shape[1]}x"
                    f"{view.canvas.shape[2]} but the model takes {spec.image_size}x{spec.image_size}; "
                    f"read views with size={spec.image_size}"
                )
            canvases.append(view.canvas)
            modality_ids.append(MODALITY_INDEX[view.modality])
        prompt_ids = expand_image_tokens(
            tokenizer.encode(sample.prompt_text()), tokenizer.image_token_id, spec.image_tokens_per_view
        )
        ids, labels = prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
        if with_labels:
            if sample.answer is None:
                raise PromptError(f"sample {index} has no answer to train on")
            answer_ids = tokenizer.encode(sample.answer + EOS)
            ids, labels = prompt_ids + answer_ids, labels + answer_ids
        if len(ids) + max_new_tokens > spec.max_context:
            raise PromptError(
                f"sample {index}: {len(ids)} prompt tokens (including {len(sample.views)} view(s) x "
                f"{spec.image_tokens_per_view} image tokens) + {max_new_tokens} new tokens exceed the "
                f"context of {spec.max_context}; shorten the prompt, use fewer views or fewer new tokens"
            )
        rows.append(ids)
        label_rows.append(labels)

    length = max(len(r) for r in rows)
    batch = len(rows)
    input_ids = np.full((batch, length), tokenizer.pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((batch, length), dtype=np.int64)
    label_array = np.full((batch, length), IGNORE_INDEX, dtype=np.int64)
    for i, (ids, labels) in enumerate(zip(rows, label_rows)):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[i, span] = ids
        attention_mask[i, span] = 1
        label_array[i, span] = labels
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": np.stack(canvases).astype(np.float32, copy=False),
        "modality_ids": np.asarray(modality_ids, dtype=np.int64),
    }
    if with_labels:
        out["labels"] = label_array
    return out
