"""Suite specs: the CLI shorthand, prompts, and refusal to score partial outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.evaluate.suites import (
    SHORT_ANSWER_INSTRUCTION,
    LlavaVqaSuite,
    PopeSuite,
    VqaSuite,
    load_benchmark,
    parse_suite_shorthand,
    prompt_for,
    score_generations,
)

FIXTURES = Path(__file__).parent / "fixtures"


def test_shorthand_builds_the_right_spec():
    spec = parse_suite_shorthand("pope=a.jsonl,image_folder=imgs,name=pope_adv,skip_invalid=true")
    assert spec == PopeSuite(name="pope_adv", question_file=Path("a.jsonl"), image_folder=Path("imgs"), skip_invalid=True)
    llava = parse_suite_shorthand("llava_vqa=q.jsonl,answers_file=a.jsonl")
    assert isinstance(llava, LlavaVqaSuite) and llava.name == "llava_vqa"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gqa=q.jsonl", "KIND one of"),
        ("vqa", "KIND one of"),
        ("llava_vqa=q.jsonl", "answers_file"),
        ("vqa=q.jsonl,image_rot=x", "image_rot"),
        ("vqa=q.jsonl,novalue", "is not field=value"),
    ],
)
def test_shorthand_rejects_bad_options(text, message):
    with pytest.raises(ValueError, match=message):
        parse_suite_shorthand(text)


def test_prompt_suffix_added_once():
    spec = PopeSuite(name="pope", question_file=FIXTURES / "pope.jsonl")
    item = load_benchmark(spec).items[0]
    assert prompt_for(spec, item) == f"Is there a circle in the image?\n{SHORT_ANSWER_INSTRUCTION}"
    llava = LlavaVqaSuite(name="v", question_file=FIXTURES / "llava_questions.jsonl",
                          answers_file=FIXTURES / "llava_answers.jsonl", prompt_suffix=SHORT_ANSWER_INSTRUCTION)
    first = load_benchmark(llava).items[0]
    assert prompt_for(llava, first).count(SHORT_ANSWER_INSTRUCTION) == 1  # already in the question


def test_partial_predictions_are_refused():
    spec = VqaSuite(name="v", path=FIXTURES / "vqa.jsonl")
    with pytest.raises(ValueError, match="3 predictions for 4 items; refusing to score partial results"):
        score_generations(spec, load_benchmark(spec), ["a", "b", "c"])
