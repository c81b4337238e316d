import json

import pytest

from eov_edge.core.errors import CheckpointError
from eov_edge.core.prompt import SPECIAL_TOKENS, build_prompt
from eov_edge.core.slis import LOC_TOKENS
from eov_edge.core.tokenizer import (
    DEFAULT_TOKENIZER_PATH,
    TextTokenizer,
    build_default_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.from_file()


def test_shipped_tokenizer_is_reproducible_from_the_corpus(tmp_path):
    rebuilt = tmp_path / "tokenizer.json"
    build_default_tokenizer().save(rebuilt)
    shipped = json.loads(DEFAULT_TOKENIZER_PATH.read_text())
    assert json.loads(rebuilt.read_text()) == shipped, (
        "the corpus or trainer changed: rebuild with `python -m eov_edge.core.tokenizer`"
    )


def test_special_tokens_have_fixed_ids_and_are_single_tokens(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token) == [expected_id]
    assert tokenizer.encode("".join(LOC_TOKENS[:3])) == [SPECIAL_TOKENS.index(t) for t in LOC_TOKENS[:3]]


def test_round_trip_of_prompt_with_views_and_slis(tokenizer):
    text = build_prompt("Detect all ship.", ["sar", "optical"]) + \
        "ship <box><loc_1><loc_22><loc_333><loc_999></box><eos>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    # one decode step per coordinate: 4 locs + 2 tags for a box
    box_ids = tokenizer.encode("<box><loc_1><loc_22><loc_333><loc_999></box>")
    assert len(box_ids) == 6


def test_arbitrary_unicode_text_survives(tokenizer):
    text = "Wie viele Schiffe? 船 — 3 km² ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_corrupt_or_foreign_tokenizer_files(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer"):
        TextTokenizer.from_file(bad)
    with pytest.raises(CheckpointError, match="not found"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(bad))
    with pytest.raises(CheckpointError, match="not built by eov_edge.core.tokenizer"):
        TextTokenizer.from_file(bad)
