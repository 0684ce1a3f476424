"""Benchmark readers: the fixture formats parse, and bad files fail with file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.evaluate import readers
from tasks.evaluate.readers import BenchmarkFormatError

FIXTURES = Path(__file__).parent / "fixtures"


def _copy_fixtures(tmp_path: Path) -> Path:
    target = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, target)
    return target


def _append(path: Path, line: str) -> int:
    """Append one raw line; returns its 1-based line number."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, line]) + "\n")
    return len(lines) + 1


def test_vqa_jsonl():
    bench = readers.read_vqa_jsonl(FIXTURES / "vqa.jsonl")
    assert [i.item_id for i in bench.items] == ["q1", "q2", "q3", "q4"]
    assert bench.items[0].references == ("red",)
    assert bench.items[2].group == "count"
    assert bench.items[0].image_path == FIXTURES / "images" / "red_circle.png"
    assert bench.items[0].image_sha256 and not bench.skipped
    assert bench.content_hash == readers.read_vqa_jsonl(FIXTURES / "vqa.jsonl").content_hash


def test_llava_questions_join_answers():
    bench = readers.read_llava_questions(FIXTURES / "llava_questions.jsonl", FIXTURES / "llava_answers.jsonl")
    by_id = {i.item_id: i for i in bench.items}
    assert len(by_id["101"].references) == 10
    assert by_id["102"].references == ("2", "two", "3", "2", "3")  # VQA answer dicts unpacked
    assert by_id["103"].references == ("yes",)
    assert by_id["101"].group == "color"


def test_pope_and_mme():
    pope = readers.read_pope(FIXTURES / "pope.jsonl")
    assert [i.references[0] for i in pope.items] == ["yes", "no", "yes", "no", "yes"]
    assert {i.group for i in pope.items} == {"random", "adversarial", "popular"}
    mme = readers.read_mme(FIXTURES / "mme")
    assert len(mme.items) == 8
    assert {i.group for i in mme.items} == {"existence", "count"}
    assert mme.items[0].references == ("yes",) and mme.items[1].references == ("no",)
    # both questions of one image share its key (acc+ is per image)
    assert mme.items[0].image_key == mme.items[1].image_key != mme.items[2].image_key


def test_captions_and_text():
    captions = readers.read_caption_jsonl(FIXTURES / "captions.jsonl")
    assert [i.references for i in captions.items] == [
        ("a red circle on a white background",), ("one blue square in the middle of the picture",),
    ]
    text = readers.read_text_corpus(FIXTURES / "heldout_text.txt")
    assert len(text.items) == 2 and text.items[0].text.startswith("A red circle")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question_id": "q9", "image": "images/missing.png", "question": "Q?", "answer": "a"}', "image not found"),
        ('{"question_id": "q9", "image": "images/red_circle.png", "question": "Q?", "answer": 3}', "unsupported answer type int"),
        ('{"question_id": "q9", "image": "images/red_circle.png", "question": "Q?", "answer": "a", "answer_type": "essay"}', "unknown answer_type 'essay'"),
        ('{"question_id": "q9", "image": "images/red_circle.png", "question": "Q?"', "malformed JSON line"),
        ('{"question_id": "q9", "image": "../outside.png", "question": "Q?", "answer": "a"}', "leaves the image folder"),
        ('{"question_id": "q9", "image": "images/red_circle.png", "answer": "a"}', "missing field 'question'"),
    ],
)
def test_vqa_reader_names_file_and_line(tmp_path, bad_line, message):
    root = _copy_fixtures(tmp_path)
    path = root / "vqa.jsonl"
    line = _append(path, bad_line)
    with pytest.raises(BenchmarkFormatError, match=message) as error:
        readers.read_vqa_jsonl(path)
    assert f"{path}:{line}:" in str(error.value)


def test_skip_invalid_reports_what_was_skipped(tmp_path):
    root = _copy_fixtures(tmp_path)
    path = root / "vqa.jsonl"
    line = _append(path, '{"question_id": "q9", "image": "images/missing.png", "question": "Q?", "answer": "a"}')
    _append(path, "not json")
    bench = readers.read_vqa_jsonl(path, skip_invalid=True)
    assert len(bench.items) == 4
    assert [s.source for s in bench.skipped] == [f"{path}:{line}", f"{path}:{line + 1}"]
    assert "image not found" in bench.skipped[0].reason
    # skipping changes nothing about the valid items' identity
    assert bench.content_hash == readers.read_vqa_jsonl(FIXTURES / "vqa.jsonl").content_hash


def test_corrupt_image_is_rejected(tmp_path):
    root = _copy_fixtures(tmp_path)
    (root / "images" / "red_circle.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(BenchmarkFormatError, match=r"vqa.jsonl:1: image .* cannot be decoded"):
        readers.read_vqa_jsonl(root / "vqa.jsonl")


def test_llava_answers_file_errors(tmp_path):
    root = _copy_fixtures(tmp_path)
    answers = root / "llava_answers.jsonl"
    line = _append(answers, json.dumps({"question_id": 104, "answers": {"a": 1}}))
    with pytest.raises(BenchmarkFormatError, match=rf"{answers}:{line}: unsupported answer type dict"):
        readers.read_llava_questions(root / "llava_questions.jsonl", answers)
    answers.write_text(FIXTURES.joinpath("llava_answers.jsonl").read_text())
    questions = root / "llava_questions.jsonl"
    line = _append(questions, json.dumps({"question_id": 999, "image": "images/red_circle.png", "text": "Q?"}))
    with pytest.raises(BenchmarkFormatError, match=rf"{questions}:{line}: no ground-truth answer for question_id 999"):
        readers.read_llava_questions(questions, answers)


def test_pope_unknown_label(tmp_path):
    root = _copy_fixtures(tmp_path)
    path = root / "pope.jsonl"
    line = _append(path, json.dumps({"question_id": 6, "image": "images/red_circle.png", "text": "Q?", "label": "maybe"}))
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:{line}: unknown answer 'maybe'"):
        readers.read_pope(path)


def test_mme_errors(tmp_path):
    root = _copy_fixtures(tmp_path)
    txt = root / "mme" / "count" / "0003.txt"
    txt.write_text("Are there two circles? Please answer yes or no.\tYes\nno tab on this line\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{txt}:2: malformed line"):
        readers.read_mme(root / "mme")
    txt.write_text("Are there two circles? Please answer yes or no.\tPerhaps\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{txt}:1: unknown answer 'Perhaps'"):
        readers.read_mme(root / "mme")
    txt.write_text("Are there two circles? Please answer yes or no.\tYes\n")
    (root / "mme" / "count" / "0003.png").unlink()
    with pytest.raises(BenchmarkFormatError, match=rf"{txt}:1: image not found"):
        readers.read_mme(root / "mme")


def test_all_invalid_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("garbage\n")
    with pytest.raises(BenchmarkFormatError, match="no valid items \\(1 skipped as invalid\\)"):
        readers.read_vqa_jsonl(path, skip_invalid=True)


def test_duplicate_ids_rejected(tmp_path):
    root = _copy_fixtures(tmp_path)
    path = root / "vqa.jsonl"
    _append(path, path.read_text().splitlines()[0])
    with pytest.raises(BenchmarkFormatError, match="duplicate item ids \\['q1'\\]"):
        readers.read_vqa_jsonl(path)
