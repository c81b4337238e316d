"""The task registry: one TaskSpec per kind, resolved once from what a user typed."""

import pytest

from eov_edge.core.errors import PromptError
from eov_edge.core.tasks import (
    SPATIAL_ANSWER_TOKENS,
    TASK_ALIASES,
    TASKS,
    TEXT_ANSWER_TOKENS,
    answer_token_budget,
    resolve_task,
)


def test_every_alias_and_name_resolves_to_its_spec():
    for name, spec in TASKS.items():
        assert resolve_task(name) is spec
        for alias in spec.aliases:
            assert resolve_task(alias) is spec
    assert resolve_task("detect").name == "detection"
    assert resolve_task("count").name == "vqa"
    assert resolve_task(TASKS["caption"]) is TASKS["caption"]  # a spec handed down passes through
    assert len(TASK_ALIASES) == sum(len(s.aliases) for s in TASKS.values())  # no alias names two tasks


def test_an_unknown_task_names_the_choices():
    with pytest.raises(PromptError, match="unknown task 'segment'.*detection.*detect"):
        resolve_task("segment")


def test_budgets_follow_whether_answers_carry_shapes():
    assert {n for n, s in TASKS.items() if s.spatial} == {"grounding", "detection", "change", "temporal"}
    assert TASKS["detection"].answer_tokens == SPATIAL_ANSWER_TOKENS
    assert TASKS["caption"].answer_tokens == TEXT_ANSWER_TOKENS
    assert answer_token_budget([TASKS["caption"], TASKS["grounding"]]) == SPATIAL_ANSWER_TOKENS
    assert answer_token_budget([]) == TEXT_ANSWER_TOKENS  # a free-form question


def test_every_task_has_a_question_and_a_headline_metric():
    for spec in TASKS.values():
        assert spec.default_question.endswith(("?", ".", "no")) and spec.headline_metric
        assert spec.min_views in (1, 2)
