"""The demo source is deterministic and matches the committed data.dvc pointer."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from tasks.data.demo_source import (
    DemoDataConfig,
    DemoDataMismatchError,
    Scene,
    SceneShape,
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


def _caption_content(caption: str) -> tuple[str, frozenset]:
    """(background, {(colour, kind, position)}) read back from a clean caption (``Scene.describe``)."""
    head, listing = caption.rstrip(".").split(": ", 1)
    background = head.split(" on a ", 1)[1].removesuffix(" background")
    shapes = re.findall(r"a (?:small|medium|large) (\w+) (\w+) (?:at the ([\w ]+?)|in the (center))(?=, | and |$)", listing)
    assert len(shapes) == len(listing.split(", ")) + listing.count(" and "), caption
    return background, frozenset((colour, kind, at or center) for colour, kind, at, center in shapes)


def test_no_held_out_scene_shows_a_training_scene_again(tmp_path: Path) -> None:
    """Held out means unseen by the evaluation gate's contamination check too: no held-out scene has a training
    scene's background and shapes in the same cells, nor that plus or minus one shape (cosine 0.97 under the
    teacher, a near-duplicate)."""
    first = Scene(96, 96, "white", (SceneShape("circle", "red", "small", 0, 0),))
    assert first.repeats(Scene(120, 100, "white", (SceneShape("circle", "red", "large", 0, 0),)))
    two = Scene(96, 96, "white", first.shapes + (SceneShape("star", "blue", "small", 2, 2),))
    assert two.repeats(first) and first.repeats(two)
    three = Scene(96, 96, "white", two.shapes + (SceneShape("square", "green", "small", 1, 1),))
    assert not three.repeats(first) and three.repeats(two)
    assert not Scene(96, 96, "beige", first.shapes).repeats(first)
    assert not Scene(96, 96, "white", (SceneShape("circle", "red", "small", 0, 1),)).repeats(first)

    demo = generate_demo_data(tmp_path, DemoDataConfig())
    train = [_caption_content(json.loads(line)["true_caption"])
             for line in (demo / "train" / "captions.jsonl").read_text().splitlines() if "true_caption" in line]
    held_out = [_caption_content(json.loads(line)["caption"])
                for line in (demo / "eval" / "captions.jsonl").read_text().splitlines()]
    assert len(train) == 600 and len(held_out) == 100
    for background, shapes in held_out:
        for train_background, train_shapes in train:
            if background == train_background and (shapes <= train_shapes or train_shapes <= shapes):
                assert len(shapes ^ train_shapes) > 1, (background, shapes, train_shapes)
