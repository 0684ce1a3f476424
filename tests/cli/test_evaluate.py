"""``eve evaluate``: report files, gate exit status, clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main

FIXTURES = Path(__file__).parents[1] / "tasks" / "evaluate" / "fixtures"


@pytest.fixture(scope="module")
def model_dir(tiny_eve_checkpoint) -> Path:
    return tiny_eve_checkpoint


def _run(model_dir: Path, output: Path, *extra: str) -> int:
    return main(["evaluate", str(model_dir), "--suite", f"vqa={FIXTURES / 'vqa.jsonl'},name=demo_vqa",
                 "--suite", f"pope={FIXTURES / 'pope.jsonl'}", "--max-new-tokens", "3", "--no-progress",
                 "--output", str(output), *extra])


def test_evaluate_writes_report_and_gates(model_dir, tmp_path, eve_home, capsys):
    from tasks.evaluate.report import EvaluationReport

    assert _run(model_dir, tmp_path / "first") == 0
    report = EvaluationReport.load(tmp_path / "first" / "report.json")
    assert set(report.suites) == {"demo_vqa", "pope"}
    assert len(report.suites["demo_vqa"].samples) == 4
    assert (tmp_path / "first" / "metrics.png").stat().st_size > 1000
    assert "demo_vqa/accuracy" in capsys.readouterr().out

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "thresholds": [{"metric": "pope/accuracy", "minimum": 1.01}],
        "non_regression": [{"metric": "demo_vqa/accuracy", "tolerance": 0.0}],
    }))
    status = _run(model_dir, tmp_path / "second", "--policy", str(policy),
                  "--production-report", str(tmp_path / "first" / "report.json"),
                  "--train-dataset", str(_training_dataset(tmp_path)), "--no-teacher")
    out = capsys.readouterr().out
    assert status == 1  # the impossible minimum and the contaminated image both fail
    gate = json.loads((tmp_path / "second" / "gate.json").read_text())
    failed = {c["rule"] for c in gate["checks"] if not c["passed"]}
    assert failed == {"threshold", "contamination"}
    assert "## Evaluation gate: FAILED" in out and "contamination: 1 of 4" in out


def _training_dataset(tmp_path: Path) -> Path:
    from eve_model.shards import ShardSample, ShardWriter

    with ShardWriter(tmp_path / "train") as writer:
        writer.write(ShardSample("k1", {"key": "k1", "caption": "a red circle"},
                                 image_bytes=(FIXTURES / "images" / "red_circle.png").read_bytes(), image_ext="png"))
    return tmp_path / "train"


def test_bad_input_exits_2_with_file_and_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "vqa.jsonl"
    bad.write_text('{"question_id": "q1", "image": "nowhere.png", "question": "Q?", "answer": "a"}\n')
    status = main(["evaluate", str(model_dir), "--suite", f"vqa={bad}", "--no-progress", "--output", str(tmp_path)])
    assert status == 2
    assert f"{bad}:1: image not found" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()  # nothing scored on partial data
    assert main(["evaluate", str(model_dir), "--suite", f"vqa={bad},imge_root=x"]) == 2
    assert "imge_root" in capsys.readouterr().err  # a misspelt option is an error, not ignored
    assert main(["evaluate", str(tmp_path / "missing"), "--suite", f"vqa={bad}"]) == 2
