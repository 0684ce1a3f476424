"""What a VQA score means: the score of answering without looking at the image.

Two baselines per question type, scored with the suite's own metric (``metrics.vqa_soft_accuracy``,
exact match for one reference), over and per question type:

- **uniform chance**: guessing uniformly among the answers that type's questions have (its expected
  accuracy);
- **most common answer**: always giving that type's most frequent answer (what a model that reads
  only the question can reach; a gate minimum below it lets an image-blind model through).

A candidate's ``<suite>/accuracy`` and ``<suite>/accuracy_<type>`` are shown next to these in the
review form (``tasks/promotion.py``) and by ``eve demo``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, Field

from tasks.evaluate import metrics as M
from tasks.evaluate.readers import EvalItem

UNIFORM_CHANCE = "uniform chance"
MOST_COMMON_ANSWER = "most common answer"


class GroupBaselines(BaseModel):
    """The two baselines for one question type (or for all questions)."""

    uniform_chance: float
    """Expected accuracy of a uniform guess among the type's answers."""
    majority_answer: float
    """Accuracy of always giving the type's most common answer."""
    most_common_answer: str | None = None
    """That answer (None for the whole set, where each type has its own)."""
    num_questions: int
    """Questions it was computed on."""


class AnswerBaselines(BaseModel):
    """Both baselines of one VQA suite, over all questions and per question type."""

    suite: str
    """Suite name; metrics are ``<suite>/accuracy`` and ``<suite>/accuracy_<type>``."""
    overall: GroupBaselines
    by_type: dict[str, GroupBaselines] = Field(default_factory=dict)

    def by_metric(self) -> dict[str, dict[str, float]]:
        """Metric key -> {baseline name -> score}, for the metrics the suite reports."""
        rows = {f"{self.suite}/accuracy": self.overall}
        rows.update({f"{self.suite}/accuracy_{group}": baselines for group, baselines in self.by_type.items()})
        return {key: {UNIFORM_CHANCE: b.uniform_chance, MOST_COMMON_ANSWER: b.majority_answer} for key, b in rows.items()}


def _group_baselines(items: Sequence[EvalItem]) -> GroupBaselines:
    # Candidate answers: the distinct (normalised) first references of the group's questions.
    answers = Counter(M.normalize_answer(item.references[0]) for item in items)
    most_common = answers.most_common(1)[0][0]
    # A guess scores only where it equals a reference, so the mean over the candidate answers is the
    # sum of the distinct references' scores divided by the number of candidates.
    uniform = [
        sum(M.vqa_soft_accuracy(reference, item.references)
            for reference in {M.normalize_answer(r) for r in item.references} if reference in answers) / len(answers)
        for item in items
    ]
    majority = [M.vqa_soft_accuracy(most_common, item.references) for item in items]
    return GroupBaselines(uniform_chance=M.mean(uniform), majority_answer=M.mean(majority),
                          most_common_answer=most_common, num_questions=len(items))


def answer_baselines(suite: str, items: Sequence[EvalItem]) -> AnswerBaselines:
    """The baselines of a VQA suite's items (each with references and a question type)."""
    by_group: dict[str, list[EvalItem]] = defaultdict(list)
    for item in items:
        if item.references:
            by_group[item.group or "all"].append(item)
    if not by_group:
        raise ValueError(f"suite {suite}: no question has a reference answer")
    groups = {group: _group_baselines(group_items) for group, group_items in sorted(by_group.items())}
    total = sum(g.num_questions for g in groups.values())
    overall = GroupBaselines(
        # Each type's own guess, weighted by its share of the questions (a model that knows the type
        # from the question, as every model here does).
        uniform_chance=sum(g.uniform_chance * g.num_questions for g in groups.values()) / total,
        majority_answer=sum(g.majority_answer * g.num_questions for g in groups.values()) / total,
        num_questions=total,
    )
    return AnswerBaselines(suite=suite, overall=overall, by_type=groups if set(groups) != {"all"} else {})


__all__ = ["MOST_COMMON_ANSWER", "UNIFORM_CHANCE", "AnswerBaselines", "GroupBaselines", "answer_baselines"]
