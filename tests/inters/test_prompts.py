"""The INTERS template registry: every task covered with zero- and few-shot templates, rendering, and the
strict listwise parser."""
from __future__ import annotations

import pytest

from flagstone.models.prompts import (
    GROUPS,
    TASKS,
    TEMPLATES,
    format_permutation,
    get_template,
    number_passages,
    parse_permutation,
)

REQUIRED = {
    "query understanding": {"query_reformulation", "query_expansion", "intent_classification", "query_clarification",
                            "query_suggestion"},
    "document understanding": {"summarization", "fact_verification", "reading_comprehension"},
    "query-document relationship": {"pointwise_reranking", "pairwise_reranking", "listwise_reranking"},
}


def _example(task: str) -> dict[str, str]:
    return {field: f"<{field} text>" for field in TASKS[task].fields}


def test_every_required_task_is_in_its_group():
    for group, tasks in REQUIRED.items():
        assert group in GROUPS
        assert tasks <= {t.name for t in TASKS.values() if t.group == group}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_has_zero_and_few_shot_templates_that_render(task):
    templates = TEMPLATES[task]
    assert len(templates) >= 2
    assert sum(t.shots == 0 for t in templates) >= 2 and any(t.shots > 0 for t in templates)
    assert len({t.name for t in templates}) == len(templates)
    for template in templates:
        demos = [(_example(task), f"answer {i}") for i in range(template.shots)]
        prompt = template.render(_example(task), demos)
        for field in TASKS[task].fields:
            assert f"<{field} text>" in prompt  # every field reaches the prompt
        assert prompt.endswith(template.cue)
        for _, answer in demos:
            assert f"{template.cue} {answer}" in prompt


def test_templates_are_distinct_prose():
    instructions = [t.instruction for ts in TEMPLATES.values() for t in ts]
    assert len(set(instructions)) == len(instructions)


def test_render_checks_demonstrations_and_fields_and_keeps_braces():
    few = next(t for t in TEMPLATES["query_matching"] if t.shots)
    with pytest.raises(ValueError, match="demonstration"):
        few.render(_example("query_matching"), [])
    zero = get_template("query_matching")
    with pytest.raises(KeyError, match="other"):
        zero.render({"query": "q"})
    assert "{not a field}" in zero.render({"query": "{not a field}", "other": "x"})


def test_get_template_errors_name_the_choices():
    assert get_template("pairwise_reranking").shots == 0
    with pytest.raises(ValueError, match="unknown task"):
        get_template("nope")
    with pytest.raises(ValueError, match="no template"):
        get_template("pairwise_reranking", "nope")


def test_permutation_round_trip_and_strict_parsing():
    assert parse_permutation(format_permutation([2, 0, 1]), 3) == [2, 0, 1]
    assert parse_permutation(" [2] > [1] > [3]\nBecause passage 2 ...", 3) == [1, 0, 2]
    assert parse_permutation("[2]>[1]>[3]", 3) == [1, 0, 2]
    for reply in ("[2] > [1]", "[2] > [1] > [1]", "[2] > [1] > [4]", "The ranking is [2] > [1] > [3]",
                  "2 > 1 > 3", "", "[2] > [1] > [3] > [4]", "[2], [1], [3]"):
        assert parse_permutation(reply, 3) is None, reply
    assert number_passages(["a  b\nc", "d"]) == "[1] a b c\n[2] d"


def test_the_cli_lists_the_registry_tasks():
    from flagstone.cli.train import _INTERS_TASKS

    assert tuple(TASKS) == _INTERS_TASKS
