"""Re-caption diff: which samples got new captions from which teacher, and how statistics moved."""

from __future__ import annotations

import pytest

from tasks.caption.config import CaptionConfig
from tasks.caption.diff import recaption_diff
from tasks.caption.run import caption_dataset
from tests.tasks.caption.test_run import CountingTeacher, write_images


def test_recaption_diff_counts_changes_and_teachers(tmp_path, eve_home) -> None:
    source = write_images(tmp_path / "in", 6, captions={0: "Already  clean caption here.", 1: "Another one."})
    caption_dataset(source, tmp_path / "v1", CaptionConfig(backend="source"), progress=False)
    caption_dataset(tmp_path / "v1", tmp_path / "v2",
                    CaptionConfig(backend="hf", model="counting-teacher"), backend=CountingTeacher(), progress=False)

    diff = recaption_diff(tmp_path / "v1", tmp_path / "v2")
    assert (diff.num_common, diff.num_added, diff.num_removed, diff.num_image_changed) == (6, 0, 0, 0)
    assert diff.num_caption_changed == 6
    [change] = diff.teacher_changes
    assert (change.before, change.after, change.count) == ("source:source:caption:None", "hf:counting-teacher:brief-v1", 6)
    deltas = {delta.metric: delta for delta in diff.metric_deltas}
    # v1 captions: "Already clean caption here." (4 words), "Another one." (2), "source caption N" x4 (3 each).
    assert deltas["mean_words"].previous == pytest.approx((4 + 2 + 3 * 4) / 6)
    assert deltas["mean_words"].current == pytest.approx(4.0)  # "A picture numbered <hash>." for every image
    assert diff.changed_examples[0]["before"] == "Already clean caption here."

    # Recaptioning a captioned version keeps the true original as source_caption, not v1's normalised text.
    from eve_model.shards import iter_samples

    first = next(iter_samples(tmp_path / "v2"))
    assert first.meta["source_caption"] == "Already  clean caption here."
    assert recaption_diff(tmp_path / "v2", tmp_path / "v2").num_caption_changed == 0
