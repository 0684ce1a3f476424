"""Contamination: byte, pixel and near-duplicate image matches, and reference n-gram overlap."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.evaluate import readers
from tasks.evaluate.contamination import (
    TrainingSample,
    check_contamination,
    eval_inputs,
    iter_training_samples,
    pixel_sha256,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def thumbnail_embedder(images: list[bytes]) -> np.ndarray:
    """A plain, deterministic embedding: centred 8x8 RGB thumbnail, L2-normalised. (B, 192)"""
    rows = []
    for data in images:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float64)
        vector = (pixels - pixels.mean()).ravel()
        rows.append(vector / (np.linalg.norm(vector) or 1.0))
    return np.stack(rows)


@pytest.fixture
def eval_set():
    benchmark = readers.read_vqa_jsonl(FIXTURES / "vqa.jsonl")
    return eval_inputs({"vqa": benchmark})


def test_eval_inputs_one_image_per_distinct_file(eval_set):
    images, texts = eval_set
    assert [eval_id for eval_id, _ in images] == ["vqa/q1", "vqa/q2", "vqa/q3", "vqa/q4"]
    assert ("vqa/q1", "red") in texts


def test_clean_training_set_passes(eval_set):
    images, texts = eval_set
    unrelated = Image.new("RGB", (16, 16), "black")
    report = check_contamination(images, [TrainingSample("t0", _png(unrelated), ["a black square"])], texts,
                                 embed=thumbnail_embedder, near_duplicate_threshold=0.95)
    assert not report.contaminated
    assert report.num_train_images == 1 and report.max_cosine < 0.95


def test_exact_pixel_and_near_duplicates_are_found(eval_set):
    images, texts = eval_set
    red = (FIXTURES / "images" / "red_circle.png").read_bytes()
    blue = Image.open(FIXTURES / "images" / "blue_square.png").convert("RGB")
    green = Image.open(FIXTURES / "images" / "green_circles.png").convert("RGB")
    reencoded_blue = _png(blue, compress_level=1)  # same pixels, different bytes
    assert reencoded_blue != (FIXTURES / "images" / "blue_square.png").read_bytes()
    assert pixel_sha256(reencoded_blue) == pixel_sha256((FIXTURES / "images" / "blue_square.png").read_bytes())
    resized_green = _png(green.resize((32, 32), Image.NEAREST))  # a resized copy: neither bytes nor pixels match
    training = [
        TrainingSample("copy", red, ["a red circle"]),
        TrainingSample("reencoded", reencoded_blue),
        TrainingSample("resized", resized_green),
        TrainingSample("text-only", None, ["caption without image"]),
        TrainingSample("corrupt", b"\x89PNG\r\n\x1a\n broken"),
    ]
    report = check_contamination(images, training, texts, embed=thumbnail_embedder, near_duplicate_threshold=0.95)
    assert [(m.eval_id, m.train_key) for m in report.exact_byte_matches] == [("vqa/q1", "copy")]
    assert [(m.eval_id, m.train_key) for m in report.exact_pixel_matches] == [("vqa/q2", "reencoded")]
    assert [(m.eval_id, m.train_key) for m in report.near_duplicates] == [("vqa/q3", "resized")]
    assert report.near_duplicates[0].cosine >= 0.95
    assert report.num_contaminated_images == 3 and report.contaminated
    assert report.num_train_images == 4
    assert report.undecodable_train_images == ["corrupt"]  # reported, and the check still ran

    without_embedder = check_contamination(images, training, texts)
    assert without_embedder.near_duplicates == [] and without_embedder.near_duplicate_threshold is None
    assert without_embedder.num_contaminated_images == 2


def test_ngram_overlap_rate():
    texts = [
        ("c1", "one red circle on a white background near the top"),  # 10 words: 3 eight-grams
        ("c2", "two blue squares side by side at the bottom left"),  # 10 words, no overlap
        ("c3", "red"),  # too short for an 8-gram: not counted
    ]
    training = [TrainingSample("t", None, ["Here: one red circle on a white background near the corner."])]
    report = check_contamination([], training, texts, ngram_n=8)
    # c1 shares "one red circle on a white background near" with the training caption.
    assert report.eval_texts_checked == 2
    assert report.eval_texts_overlapping == 1
    assert report.ngram_overlap_rate == pytest.approx(1 / 2)
    assert report.overlap_examples == ["c1"]


def test_training_samples_from_shard_dataset(tmp_path, eval_set):
    from eve_model.shards import ShardSample, ShardWriter

    images, texts = eval_set
    red = (FIXTURES / "images" / "red_circle.png").read_bytes()
    with ShardWriter(tmp_path / "train", max_items_per_shard=2) as writer:
        writer.write(ShardSample("k1", {"key": "k1", "caption": "a red circle", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
            image_bytes=red, image_ext="png"))
        writer.write(ShardSample("k2", {"key": "k2", "caption": "text only", "conversations": None}))
    samples = list(iter_training_samples([str(tmp_path / "train")]))
    assert [s.texts for s in samples] == [["a red circle", "red"], ["text only"]]
    report = check_contamination(images, samples, texts)
    assert [m.eval_id for m in report.exact_byte_matches] == ["vqa/q1"]
