"""Prompt format and special tokens, shared by training and the device runtime (no torch).

A prompt for ``n`` views::

    <|user|><optical><t0><image><sar><t1><image>
    {instruction}<|assistant|>{answer}<eos>

Each view contributes its modality tag, a view tag when there are several views, and one
``<image>`` placeholder that :func:`expand_image_tokens` widens to the number of image tokens the
encoder produces per view. View order lives in the text, so the graphs need no extra inputs.
"""

from __future__ import annotations

from typing import Sequence

from eov_edge.core.bands import MODALITIES
from eov_edge.core.errors import PromptError
from eov_edge.core.slis import LOC_TOKENS, MAX_VIEWS, SHAPE_TOKENS, VIEW_TOKENS

PAD, EOS, USER, ASSISTANT, IMAGE = "<pad>", "<eos>", "<|user|>", "<|assistant|>", "<image>"
MODALITY_TOKENS: tuple[str, ...] = tuple(f"<{m}>" for m in MODALITIES)

# Order fixes the token ids (pad=0, eos=1, ...): append only.
SPECIAL_TOKENS: tuple[str, ...] = (
    (PAD, EOS, USER, ASSISTANT, IMAGE) + MODALITY_TOKENS + VIEW_TOKENS + SHAPE_TOKENS + LOC_TOKENS
)


def view_block(modalities: Sequence[str]) -> str:
    """The tags that introduce ``modalities`` views, in order."""
    if not modalities:
        raise PromptError("a prompt needs at least one view")
    if len(modalities) > MAX_VIEWS:
        raise PromptError(f"at most {MAX_VIEWS} views per sample, got {len(modalities)}")
    parts = []
    for i, modality in enumerate(modalities):
        if modality not in MODALITIES:
            raise PromptError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        view_tag = f"<t{i}>" if len(modalities) > 1 else ""
        parts.append(f"<{modality}>{view_tag}{IMAGE}")
    return "".join(parts)


def build_prompt(instruction: str, modalities: Sequence[str]) -> str:
    """The model input text for ``instruction`` about views of ``modalities`` (answer excluded)."""
    if IMAGE in instruction:
        raise PromptError(
            f"the instruction may not contain {IMAGE}: views are added by build_prompt; pass the "
            "question text only"
        )
    return f"{USER}{view_block(modalities)}\n{instruction.strip()}{ASSISTANT}"


def check_image_tags(prompt: str, num_views: int) -> None:
    """Raise PromptError unless ``prompt`` has exactly one ``<image>`` per view."""
    found = prompt.count(IMAGE)
    if found != num_views:
        raise PromptError(
            f"the prompt has {found} {IMAGE} tag(s) but {num_views} view(s) were given; "
            "use one tag per view (build_prompt does this)"
        )


def expand_image_tokens(ids: Sequence[int], image_token_id: int, tokens_per_image: int) -> list[int]:
    """Replace each ``<image>`` id by ``tokens_per_image`` copies (one per image embedding)."""
    out: list[int] = []
    for token in ids:
        if token == image_token_id:
            out.extend([image_token_id] * tokens_per_image)
        else:
            out.append(token)
    return out
