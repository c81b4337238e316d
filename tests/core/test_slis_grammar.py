"""Grammar-constrained SLIS decoding: whatever the logits, the answer parses; legal choices stay."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eov_edge.core import slis
from eov_edge.core.prompt import SPECIAL_TOKENS
from eov_edge.core.slis_grammar import (
    CLOSE_IDS,
    LOC_END,
    LOC_FIRST,
    OPEN_IDS,
    SlisGrammar,
    expected_bin,
)

VOCAB = LOC_END + 8  # every special token plus a few ordinary ones
BOX = SPECIAL_TOKENS.index("<box>")


def text_of(ids: list[int]) -> str:
    """SLIS-relevant special tokens as themselves, every other token as a plain word."""
    pieces = []
    for i in ids:
        token = SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else ""
        pieces.append(token if token in slis.LOC_TOKENS + slis.SHAPE_TOKENS + slis.VIEW_TOKENS else " car ")
    return "".join(pieces)


def greedy(logits_per_step: np.ndarray, expected_locations: bool = True) -> tuple[list[list[int]], SlisGrammar]:
    """logits_per_step (T, B, V) -> the constrained greedy ids per row."""
    steps, batch, _ = logits_per_step.shape
    grammar = SlisGrammar(batch, expected_locations)
    chosen: list[list[int]] = [[] for _ in range(batch)]
    for t in range(steps):
        ids = grammar.constrain(logits_per_step[t].copy()).argmax(-1)
        grammar.advance(ids.tolist())
        for row, i in enumerate(ids.tolist()):
            chosen[row].append(i)
    return chosen, grammar


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bias=st.sampled_from(["loc", "open", "close", "none"]))
def test_any_logits_give_well_formed_answers(seed, bias):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(40, 3, VOCAB)).astype(np.float32)
    # push the model towards the tokens that break the grammar most often
    if bias == "loc":
        logits[..., LOC_FIRST:LOC_END] += 3.0
    elif bias == "open":
        logits[..., list(OPEN_IDS)] += 4.0
    elif bias == "close":
        logits[..., list(CLOSE_IDS.values())] += 4.0
    chosen, grammar = greedy(logits)
    for row, ids in enumerate(chosen):
        parsed = slis.parse(text_of(ids))
        if grammar.open_kind[row] is None:
            assert parsed.ok, parsed.problems
        else:  # cut off by the length limit: the open shape is the only problem
            assert len(parsed.problems) == 1 and "never closed" in parsed.problems[0]


@pytest.mark.parametrize("expected_locations", [False, True])
def test_legal_choices_are_left_alone(expected_locations):
    answer = [BOX, LOC_FIRST + 10, LOC_FIRST + 20, LOC_FIRST + 30, LOC_FIRST + 40, CLOSE_IDS["box"], 1]
    logits = np.zeros((len(answer), 1, VOCAB), np.float32)
    for t, token in enumerate(answer):
        logits[t, 0, token] = 50.0  # a confident model: its mean bin is its argmax
    chosen, _ = greedy(logits, expected_locations)
    assert chosen == [answer]


def test_expected_bin_is_the_rounded_mean_of_the_distribution():
    two_peaks = np.full(1000, -30.0)
    two_peaks[[100, 300]] = 0.0
    assert expected_bin(two_peaks) == 200
    assert expected_bin(np.zeros(4)) == 2  # mean 1.5 rounds half up
    assert expected_bin(torch.tensor(two_peaks, dtype=torch.float32)) == 200
    spike = np.full(10, -50.0)
    spike[9] = 0.0
    assert expected_bin(spike) == 9
    # the mass near the mean: all of it for a spike, none between two far peaks, 21/1000 when flat
    assert expected_bin(spike, with_mass=True)[1] == pytest.approx(1.0)
    assert expected_bin(two_peaks, with_mass=True)[1] == pytest.approx(0.0, abs=1e-9)
    assert expected_bin(np.zeros(1000), with_mass=True) == (500, pytest.approx(21 / 1000))


def test_a_location_is_the_mean_of_the_model_distribution_not_its_argmax():
    # The failure seen on the shipped nano model: a spike at bin 0 beats a broad bump around 600.
    bins = np.arange(LOC_END - LOC_FIRST)
    logits = np.full((1, VOCAB), -5.0, np.float32)
    logits[0, LOC_FIRST:LOC_END] = 2.0 - 0.5 * ((bins - 600) / 40.0) ** 2
    logits[0, LOC_FIRST] = 4.0
    grammar = SlisGrammar(1)
    grammar.advance([BOX])
    masked = grammar.constrain(logits.copy())
    chosen = int(masked.argmax())
    assert np.isfinite(masked[0]).sum() == 1  # the grammar chose: nothing else is left
    assert 0.0 < grammar.location_mass[0] < 0.5  # a broad bump: little mass near the chosen bin
    p = np.exp(logits[0, LOC_FIRST:LOC_END].astype(np.float64) - 4.0)
    assert chosen - LOC_FIRST == int(np.floor((p * bins).sum() / p.sum() + 0.5))
    assert 500 < chosen - LOC_FIRST < 600
    argmax_grammar = SlisGrammar(1, expected_locations=False)
    argmax_grammar.advance([BOX])
    assert int(argmax_grammar.constrain(logits.copy()).argmax()) == LOC_FIRST
    # x2 >= x1: the mean is over the legal bins only (flat from 600: the mean of 600..999)
    grammar.advance([LOC_FIRST + 600])
    grammar.advance([LOC_FIRST + 700])
    flat = np.zeros((1, VOCAB), np.float32)
    flat[0, LOC_FIRST : LOC_FIRST + 600] = 30.0  # illegal bins carry no weight
    assert int(grammar.constrain(flat).argmax()) - LOC_FIRST == 800  # 799.5 rounds up


def test_box_corners_stay_ordered_and_the_box_closes_after_four():
    grammar = SlisGrammar(1)
    grammar.advance([BOX])
    grammar.advance([LOC_FIRST + 600])  # x1
    grammar.advance([LOC_FIRST + 700])  # y1
    logits = np.zeros((1, VOCAB), np.float32)
    logits[0, LOC_FIRST + 100] = 9.0  # the model wants x2 < x1
    x2 = int(grammar.constrain(logits.copy()).argmax())
    assert LOC_FIRST + 600 <= x2 < LOC_END
    grammar.advance([x2])
    logits[0, LOC_FIRST + 200] = 10.0
    assert int(grammar.constrain(logits.copy()).argmax()) >= LOC_FIRST + 700
    grammar.advance([LOC_FIRST + 800])
    masked = grammar.constrain(logits.copy())
    assert np.isfinite(masked[0]).sum() == 1 and masked[0, CLOSE_IDS["box"]] == 0.0  # only </box>


def test_polygon_may_close_only_after_three_vertices():
    grammar = SlisGrammar(1)
    grammar.advance([SPECIAL_TOKENS.index("<poly>")])
    close = CLOSE_IDS["poly"]
    for count in range(8):
        masked = grammar.constrain(np.zeros((1, VOCAB), np.float32))
        assert np.isfinite(masked[0, close]) == (count >= 6 and count % 2 == 0)
        assert np.isfinite(masked[0, LOC_FIRST:LOC_END]).all()
        grammar.advance([LOC_FIRST + count])


def test_outside_a_shape_no_location_or_closing_token():
    masked = SlisGrammar(2).constrain(np.zeros((2, VOCAB), np.float32), rows=[1])
    assert np.isfinite(masked[0]).all()  # row 0 not asked for
    assert np.isinf(masked[1, LOC_FIRST:LOC_END]).all()
    assert all(np.isinf(masked[1, c]) for c in CLOSE_IDS.values())
    assert np.isfinite(masked[1, list(OPEN_IDS)]).all() and np.isfinite(masked[1, :LOC_FIRST]).sum() > 10


@pytest.mark.parametrize("state", [[], [BOX], [BOX, LOC_FIRST + 5, LOC_FIRST + 6]])
def test_numpy_and_torch_masks_agree(state):
    logits = np.random.default_rng(0).normal(size=(1, VOCAB)).astype(np.float32)
    masks = []
    for array in (logits.copy(), torch.from_numpy(logits.copy())):
        grammar = SlisGrammar(1)
        for token in state:
            grammar.advance([token])
        masks.append(np.asarray(grammar.constrain(array)))
    np.testing.assert_array_equal(masks[0], masks[1])


def test_generate_applies_the_grammar_on_an_untrained_model():
    """A random-weight model emits malformed SLIS unconstrained; with the grammar (the default) it
    cannot."""
    from eov_edge.core.inputs import Sample
    from eov_edge.core.raster import View
    from eov_edge.core.tokenizer import TextTokenizer
    from eov_edge.model import (
        EarthOneVisionConfig,
        EarthOneVisionForConditionalGeneration,
    )
    from eov_edge.model.processor import EarthOneVisionProcessor

    torch.manual_seed(0)
    config = EarthOneVisionConfig.from_preset("nano")
    model = EarthOneVisionForConditionalGeneration(config).eval()
    with torch.no_grad():  # make location and shape tokens likely, as a half-trained model does
        model.language_model.lm_head.weight[LOC_FIRST:LOC_END] *= 4
        model.language_model.lm_head.weight[list(OPEN_IDS)] *= 4
    processor = EarthOneVisionProcessor(TextTokenizer.from_file(), config)
    rng = np.random.default_rng(0)
    size = config.image_size
    samples = [Sample(views=[View(rng.random((16, size, size), dtype=np.float32), np.ones((size, size), bool),
                                  np.ones(16, bool), "rgb8", "optical", ("x",), (size, size))],
                      instruction="Detect all objects.") for _ in range(4)]
    batch = processor(samples, max_new_tokens=24)
    free = model.generate(**batch, max_new_tokens=24, slis_grammar=False)
    constrained = model.generate(**batch, max_new_tokens=24)
    texts = [processor.tokenizer.decode(row) for row in constrained.tolist()]
    assert not all(slis.parse(processor.tokenizer.decode(row)).ok for row in free.tolist())
    for text in texts:
        problems = slis.parse(text).problems
        assert all("never closed" in p for p in problems), problems
