"""Lineage manifests: the chain is checked when built, queried both ways, drawn as dot and PNG, and
served by ``eve lineage`` / ``eve registry`` / ``eve audit``."""

from __future__ import annotations

import json

import pytest

from cli.main import main as eve
from tasks.lineage.render import build_lineage_graph, format_lineage_dot, format_lineage_text, render_lineage_image
from tasks.lineage.schema import StageRecord, build_lineage_manifest, sha256_of_config
from tasks.lineage.store import find_models_using_dataset
from tasks.platform import PlatformSettings
from tasks.registry import ModelRegistry
from tests.fixtures.model_registry import passing_gate


@pytest.fixture
def two_versions(eve_home, registry_inputs):
    """v0.1.0 and v0.2.0 registered; they share the raw source (same samples) and differ downstream."""
    registry = ModelRegistry(PlatformSettings.load())
    for seed in (1, 2):
        registry.register_candidate(*registry_inputs(seed), passing_gate())
    return registry


def test_manifest_refuses_inputs_it_cannot_point_to(registry_inputs):
    _, lineage = registry_inputs(1)
    dangling = StageRecord(name="sft", input_dataset_hash="d" * 64, weights_sha256="c" * 64)
    with pytest.raises(ValueError, match="not in the lineage"):
        build_lineage_manifest(
            code_revision="abc", raw_sources=lineage.raw_sources, datasets=lineage.datasets, stages=[dangling]
        )
    orphan = lineage.stages[1].model_copy(update={"parent_weights_sha256": "9" * 64})
    with pytest.raises(ValueError, match="no earlier stage produced"):
        build_lineage_manifest(
            code_revision="abc",
            raw_sources=lineage.raw_sources,
            datasets=lineage.datasets,
            stages=[lineage.stages[0], orphan],
        )


def test_config_hashes_are_filled_and_stable(registry_inputs):
    _, lineage = registry_inputs(1)
    for stage in lineage.stages:
        assert stage.config_sha256 == sha256_of_config(dict(reversed(list(stage.config.items()))))
        assert len(stage.deepspeed_config_sha256) == 64


def test_text_chain_reaches_every_raw_source_through_the_stages(registry_inputs):
    _, lineage = registry_inputs(1)
    text = format_lineage_text(lineage)
    for dataset in lineage.all_datasets():
        assert dataset.dataset_hash in text
    for stage in lineage.stages:
        assert stage.weights_sha256 in text
    assert lineage.caption.identity.prompt_sha256 in text
    # The raw source is reached by walking the chain, not only listed as a leftover.
    assert "raw source " not in text
    graph = build_lineage_graph(lineage)
    reachable, frontier = set(), [graph.root]
    while frontier:
        node = frontier.pop()
        if node not in reachable:
            reachable.add(node)
            frontier += graph.inputs_of(node)
    assert f"dataset:{lineage.raw_sources[0].dataset_hash}" in reachable
    assert set(graph.nodes) == reachable


def test_dot_and_png_pictures(registry_inputs, tmp_path):
    _, lineage = registry_inputs(1)
    dot = format_lineage_dot(lineage)
    graph = build_lineage_graph(lineage)
    assert dot.startswith("digraph lineage {") and dot.count(" -> ") == len(graph.edges)
    png = render_lineage_image(lineage, tmp_path / "lineage.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_dataset_query_finds_every_version_that_used_it(two_versions):
    first, second = two_versions.lineage("v0.1.0"), two_versions.lineage("v0.2.0")
    shared_raw = first.raw_sources[0].dataset_hash
    assert shared_raw == second.raw_sources[0].dataset_hash
    assert [u.model_ref for u in find_models_using_dataset(two_versions.repo_dir, shared_raw)] == [
        "eve@v0.1.0",
        "eve@v0.2.0",
    ]
    only_second = second.datasets[-1].dataset_hash
    assert only_second not in first.dataset_hashes()
    usages = find_models_using_dataset(two_versions.repo_dir, only_second[:16])
    assert [(u.model_ref, u.roles) for u in usages] == [
        ("eve@v0.2.0", ["filtered", "stage:prealign", "stage:pretrain", "stage:sft"])
    ]


def test_cli_lineage_registry_and_audit(two_versions, capsys, tmp_path):
    assert eve(["lineage", "eve@v0.2.0", "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["version"] == "v0.2.0" and payload["schema_version"] == "eve-lineage/2"

    raw_hash = payload["raw_sources"][0]["dataset_hash"]
    assert eve(["lineage", "eve@v0.2.0"]) == 0
    assert raw_hash in capsys.readouterr().out
    assert eve(["lineage", "--dataset", raw_hash, "--format", "json"]) == 0
    assert [u["model_ref"] for u in json.loads(capsys.readouterr().out)] == ["eve@v0.1.0", "eve@v0.2.0"]
    assert eve(["lineage", "eve@v9.9.9"]) == 1
    assert "known versions" in capsys.readouterr().err

    assert eve(["registry", "show", "--json"]) == 0
    assert [v["version"] for v in json.loads(capsys.readouterr().out)] == ["v0.2.0", "v0.1.0"]
    assert eve(["registry", "history"]) == 0
    assert capsys.readouterr().out.count("registration") == 2

    assert eve(["audit", "verify"]) == 0
    assert "ok: 2 records" in capsys.readouterr().out
    log_path = two_versions.audit_log.path
    log_path.write_text(log_path.read_text().replace("platform", "mallory", 1))
    assert eve(["audit", "verify"]) == 1
    assert capsys.readouterr().out.startswith("FAILED: first broken link: line 1 (seq 0)")


def test_a_gate_that_dropped_nothing_keeps_the_chain_to_the_raw_source(registry_inputs):
    """The gate's output has its input's hash: one node named by both roles, still walked to raw."""
    _, lineage = registry_inputs(1)
    trained_on = lineage.stages[-1].input_dataset_hash
    original = next(d for d in lineage.datasets if d.dataset_hash == trained_on)
    unchanged = original.model_copy(update={"role": "gated", "derived_from": [trained_on]})
    lineage = lineage.model_copy(update={"datasets": [*lineage.datasets, unchanged]})
    text = format_lineage_text(lineage)
    assert f"gated = {original.role} data {trained_on}" in text
    assert "raw source " not in text  # the raw source is still reached through the original's parents
