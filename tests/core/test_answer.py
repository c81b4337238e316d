"""One answer type from generated ids: cut at EOS, padding dropped, a budget cut told from a malformed shape."""

from eov_edge.core.answer import answer_from_ids
from eov_edge.core.tokenizer import TextTokenizer

TOKENIZER = TextTokenizer.from_file()
EOS, PAD = TOKENIZER.eos_token_id, TOKENIZER.pad_token_id


def ids(text: str) -> list[int]:
    return TOKENIZER.encode(text)


def test_an_ended_answer_is_cut_at_eos_and_parsed():
    box = "ship <box><loc_1><loc_2><loc_30><loc_40></box>"
    generated = [PAD, *ids(box), EOS, *ids("junk after the end")]
    answer = answer_from_ids(generated, [0.5] * len(generated), TOKENIZER, EOS, PAD)
    assert answer.text == TOKENIZER.decode(ids(box)) and answer.token_ids == ids(box)
    assert answer.token_probs == [0.5] * len(ids(box))  # the padding's probability dropped with it
    assert not answer.cut_at_budget and answer.problems == [] and len(answer.parsed.objects) == 1
    assert answer.whole_text() == answer.text


def test_a_budget_cut_inside_a_shape_is_not_malformed_but_a_stray_tag_is():
    cut = ids("ship <box><loc_1><loc_2>")  # no EOS: the budget ended it
    answer = answer_from_ids(cut, None, TOKENIZER, EOS, PAD)
    assert answer.cut_at_budget and answer.problems == [] and answer.token_probs == []
    assert "<box>" not in answer.whole_text()  # the open shape is not shown
    broken = answer_from_ids([*ids("ship </box>"), EOS], None, TOKENIZER, EOS, PAD)
    assert not broken.cut_at_budget and broken.problems  # an ended answer's stray tag is malformed
