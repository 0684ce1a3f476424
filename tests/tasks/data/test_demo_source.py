"""The demo source is deterministic and matches the committed data.dvc pointer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tasks.data.demo_source import (
    DemoDataConfig,
    DemoDataMismatchError,
    directory_md5,
    ensure_demo_data,
    generate_demo_data,
)
from tasks.platform import REPO_ROOT


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_two_runs_give_identical_bytes(tmp_path: Path) -> None:
    config = DemoDataConfig.tiny()
    first = _file_hashes(generate_demo_data(tmp_path / "a", config))
    second = _file_hashes(generate_demo_data(tmp_path / "b", config))
    assert first == second
    assert len(first) > config.num_caption_scenes  # images + records, not an empty tree
    other_seed = _file_hashes(generate_demo_data(tmp_path / "c", config.model_copy(update={"seed": 7})))
    assert other_seed != first


def test_records_are_consistent_with_the_scenes(tmp_path: Path) -> None:
    demo = generate_demo_data(tmp_path, DemoDataConfig.tiny())
    captions = [json.loads(line) for line in (demo / "train" / "captions.jsonl").read_text().splitlines()]
    for record in captions:
        assert (demo / "train" / record["image"]).exists()
    scenes = {r["image"]: r["scene"] for r in captions if "scene" in r}
    for line in (demo / "train" / "conversations.jsonl").read_text().splitlines():
        conversation = json.loads(line)["conversations"]
        assert conversation[0]["from"] == "human" and conversation[0]["value"].startswith("<image>\n")
        assert [m["from"] for m in conversation] == ["human", "gpt"] * (len(conversation) // 2)
        scene = scenes[json.loads(line)["image"]]
        for question, answer in zip(conversation[::2], conversation[1::2]):
            if question["value"].startswith("How many shapes"):
                assert answer["value"] == str(len(scene["shapes"]))
            if question["value"].startswith("What color is the"):
                kind = question["value"].split("the ")[1].split("?")[0]
                assert answer["value"] == next(s["colour"] for s in scene["shapes"] if s["kind"] == kind)
    questions = [json.loads(line) for line in (demo / "eval" / "questions.jsonl").read_text().splitlines()]
    assert {q["question_type"] for q in questions} <= {"colour", "shape", "count", "position"}
    assert not {q["image"] for q in questions} & set(scenes)  # held-out scenes are separate files
    assert all(len(q["answer"].split()) == 1 for q in questions)


def test_ensure_demo_data_regenerates_what_data_dvc_records(tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    demo_dir = ensure_demo_data(data_root, REPO_ROOT / "data.dvc")
    assert (demo_dir / "train" / "captions.jsonl").exists()

    (demo_dir / "train" / "captions.jsonl").write_text("{}\n")
    with pytest.raises(DemoDataMismatchError, match="data.dvc records"):
        ensure_demo_data(data_root, REPO_ROOT / "data.dvc")
    shutil.rmtree(demo_dir)
    assert directory_md5(ensure_demo_data(data_root, REPO_ROOT / "data.dvc").parent)
