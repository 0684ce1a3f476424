"""Lineage as auditors read it: a tree of words and full hashes (no JSON blobs, no "None items"), a
picture laid out by Graphviz whose edges never run through a box, and the reverse query by any key of
the dataset registry (hash prefix, DVC md5, tag)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from cli.main import main as eve
from tasks.lineage.render import format_lineage_dot, format_lineage_text, render_lineage_image
from tests.fixtures.model_registry import passing_gate

needs_graphviz = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (Debian graphviz) is installed by scripts/test.sh")


def test_the_text_tree_is_words_and_hashes(registry_inputs):
    _, lineage = registry_inputs(1)
    text = format_lineage_text(lineage.model_copy(update={"version": "v0.1.0"}))
    assert "{" not in text and "None" not in text
    assert "gate passed" in text and "vqa_accuracy" in text
    for stage in lineage.stages:
        assert f"{stage.name}: weights {stage.weights_sha256}" in text


@needs_graphviz
def test_graphviz_routes_every_edge_around_the_boxes(registry_inputs):
    _, lineage = registry_inputs(1)
    layout = json.loads(subprocess.run(["dot", "-Tjson"], input=format_lineage_dot(lineage), text=True,
                                       capture_output=True, check=True).stdout)
    boxes = {}
    for node in layout["objects"]:
        x, y = (float(v) for v in node["pos"].split(","))
        half_w, half_h = float(node["width"]) * 36, float(node["height"]) * 36  # inches -> points, halved
        boxes[node["_gvid"]] = (x - half_w, x + half_w, y - half_h, y + half_h)
    assert len(boxes) == len(layout["objects"]) and layout["edges"]
    for edge in layout["edges"]:
        ends = {edge["tail"], edge["head"]}
        for draw in edge["_draw_"]:
            for px, py in draw.get("points", []):
                for gvid, (x0, x1, y0, y1) in boxes.items():
                    if gvid in ends:
                        continue
                    inside = x0 + 2 < px < x1 - 2 and y0 + 2 < py < y1 - 2
                    assert not inside, f"edge {edge['tail']}->{edge['head']} runs through node {gvid}"


@needs_graphviz
@pytest.mark.parametrize("image_format", ["png", "svg"])
def test_pictures_come_from_graphviz(registry_inputs, tmp_path, image_format):
    _, lineage = registry_inputs(1)
    picture = render_lineage_image(lineage, tmp_path / f"lineage.{image_format}", image_format)
    head = picture.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if image_format == "png" else b"<svg" in picture.read_bytes()[:2000]


def test_reverse_lineage_by_hash_prefix_dvc_md5_or_tag(eve_home, registry_inputs, capsys):
    from tasks.data.versioning import DatasetRegistry
    from tasks.platform import PlatformSettings
    from tasks.registry import ModelRegistry

    weights, lineage = registry_inputs(1)
    ModelRegistry(PlatformSettings.load()).register_candidate(weights, lineage, passing_gate())
    filtered = next(d for d in lineage.datasets if d.role == "filtered")
    version = DatasetRegistry.from_settings().register(filtered.location, "week1-filtered")
    for key in (filtered.dataset_hash[:12], version.dvc_md5, version.tag):
        assert eve(["lineage", "--dataset", key]) == 0
        assert "eve@v0.1.0: filtered, stage:prealign" in capsys.readouterr().out
    assert eve(["lineage", "--dataset", "zzzz"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert eve(["lineage", "--dataset", "f" * 64]) == 1
    assert "no registered model version used dataset" in capsys.readouterr().err
