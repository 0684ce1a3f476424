"""The chance baselines `eve demo` prints next to the model's accuracy."""

from __future__ import annotations

import json

from cli.demo import answer_baselines


def test_baselines_by_hand(tmp_path):
    rows = [("colour", "red"), ("colour", "red"), ("colour", "blue"), ("count", "2"), ("count", "3")]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"question_type": t, "answer": a}) for t, a in rows))
    baselines = answer_baselines(path)
    # uniform: colour 3 questions x 1/2 distinct answers + count 2 x 1/2 = 2.5 of 5
    assert abs(baselines["uniform_chance"] - 2.5 / 5) < 1e-12
    # majority: colour "red" right 2 of 3, count either answer right 1 of 2 = 3 of 5
    assert abs(baselines["majority_answer"] - 3 / 5) < 1e-12
    # Per type, printed next to each type's accuracy.
    assert baselines["by_type"]["colour"] == {"uniform_chance": 1 / 2, "majority_answer": 2 / 3}
    assert baselines["by_type"]["count"] == {"uniform_chance": 1 / 2, "majority_answer": 1 / 2}
