"""Prompt format and batch building (numpy, shared with the runtime)."""

import numpy as np
import pytest

from eov_edge.core.errors import PromptError, ViewMismatchError
from eov_edge.core.inputs import IGNORE_INDEX, InputSpec, Sample, build_batch
from eov_edge.core.prompt import build_prompt, expand_image_tokens, view_block
from eov_edge.core.raster import View
from eov_edge.core.tokenizer import TextTokenizer

SPEC = InputSpec(image_size=32, image_tokens_per_view=4, max_context=64)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.from_file()


def make_view(modality="optical", size=32, value=0.0):
    canvas = np.full((16, size, size), value, np.float32)
    return View(canvas, np.ones((size, size), bool), np.ones(16, bool), "rgb8", modality, ("x",), (size, size))


def test_view_block_tags_each_view_in_order():
    assert view_block(["optical"]) == "<optical><image>"
    assert view_block(["sar", "optical", "sar"]) == "<sar><t0><image><optical><t1><image><sar><t2><image>"
    with pytest.raises(PromptError, match="unknown modality"):
        view_block(["lidar"])
    with pytest.raises(PromptError, match="at most 16"):
        view_block(["sar"] * 17)


def test_instruction_may_not_smuggle_image_tags():
    with pytest.raises(PromptError, match="may not contain <image>"):
        build_prompt("look <image>", ["sar"])


def test_expand_image_tokens():
    assert expand_image_tokens([1, 4, 2, 4], 4, 3) == [1, 4, 4, 4, 2, 4, 4, 4]


def test_batch_is_left_padded_with_views_in_order(tokenizer):
    samples = [
        Sample(views=[make_view("sar", value=1.0)], instruction="Count the ship."),
        Sample(views=[make_view("optical", value=2.0), make_view("sar", value=3.0)],
               instruction="Has anything changed between the two images? Be brief."),
    ]
    batch = build_batch(samples, tokenizer, SPEC)
    assert batch["pixel_values"].shape == (3, 16, 32, 32)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch["modality_ids"].tolist() == [1, 0, 1]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids == tokenizer.image_token_id).sum(axis=1).tolist() == [4, 8]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    assert ids[0, -1] == tokenizer.assistant_token_id


def test_labels_cover_answer_and_eos_only(tokenizer):
    sample = Sample(views=[make_view()], instruction="Classify this scene.", answer="forest")
    batch = build_batch([sample], tokenizer, SPEC, with_labels=True, padding_side="right")
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    supervised = labels != IGNORE_INDEX
    assert tokenizer.decode(ids[supervised]) == "forest<eos>"
    assert (labels[supervised] == ids[supervised]).all()
    with pytest.raises(PromptError, match="no answer"):
        build_batch([Sample(views=[make_view()], instruction="x")], tokenizer, SPEC, with_labels=True)


def test_more_image_tags_than_views_is_refused(tokenizer):
    prompt = "<|user|><sar><t0><image><sar><t1><image>\nCount.<|assistant|>"
    with pytest.raises(PromptError, match="2 <image> tag"):
        build_batch([Sample(views=[make_view("sar")], prompt=prompt)], tokenizer, SPEC)
    with pytest.raises(PromptError, match="not both"):
        Sample(views=[make_view()], prompt=prompt, instruction="x").prompt_text()


def test_prompt_longer_than_context_is_refused(tokenizer):
    long = Sample(views=[make_view()], instruction="word " * 80)
    with pytest.raises(PromptError, match="exceed the context of 64"):
        build_batch([long], tokenizer, SPEC)
    short = Sample(views=[make_view()], instruction="Describe.")
    build_batch([short], tokenizer, SPEC, max_new_tokens=10)
    with pytest.raises(PromptError, match="new tokens exceed"):
        build_batch([short], tokenizer, SPEC, max_new_tokens=60)


def test_views_of_the_wrong_size_are_refused(tokenizer):
    with pytest.raises(ViewMismatchError, match="read views with size=32"):
        build_batch([Sample(views=[make_view(), make_view(size=16)], instruction="x")], tokenizer, SPEC)
    with pytest.raises(ViewMismatchError, match="no views"):
        build_batch([Sample(views=[], instruction="x")], tokenizer, SPEC)
