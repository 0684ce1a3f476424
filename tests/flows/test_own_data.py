"""Retrain on your own data, as the README says, on a real image-caption set (Tux Paint stamps in the
Hugging Face layout, tests/fixtures/real_image_captions.py); then new data arriving through the
deployment's trigger, with a real server and a real process worker.

Both run the configuration shown in the README's "Retrain on your own data", unchanged, with only
test-size changes given as ``--set`` (one rank, two steps per stage, no minimum accuracy for a
model trained for seconds, the promotion skipped)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.fixtures.prefect_server import REPO_ROOT

pytestmark = pytest.mark.slow

TEST_SIZE = [
    "--set", "training.job.tasks_per_node=1",
    "--set", "training.stage_overrides={" + ", ".join(
        f"'{stage}': {{max_steps: 2, global_batch_size_samples: 2, micro_batch_size_samples: 2}}"
        for stage in ("base-llm", "1", "2", "3")) + "}",
    "--set", "evaluation.harness={batch_size: 4, max_new_tokens: 4, show_progress: false}",
    "--gate-minimum", "demo_vqa/accuracy=0",
    "--set", "promotion.mode=skip",
]


def readme_config() -> str:
    """The YAML block of the README's "Retrain on your own data", verbatim."""
    section = (REPO_ROOT / "README.md").read_text().split("## Retrain on your own data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def eve(*argv: str) -> tuple[int, str]:
    from cli.main import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = main(list(argv))
    return code, output.getvalue()


def lay_out_as_the_readme(tuxpaint_sets: dict[str, Path], where: Path, photos: str = "a") -> Path:
    """photos/ (a Hugging Face image folder with llava.json), heldout/ and retrain.yaml side by side."""
    shutil.copytree(tuxpaint_sets[photos], where / "photos")
    shutil.copytree(tuxpaint_sets["eval"].parent, where / "heldout")
    config = where / "retrain.yaml"
    config.write_text(readme_config())
    return config


def test_eve_retrain_config_takes_a_real_hugging_face_folder_to_a_registered_candidate(
    prefect_server, eve_home, tuxpaint_sets, tmp_path
):
    from tasks.lineage.store import read_lineage
    from tasks.registry import ModelRegistry

    config = lay_out_as_the_readme(tuxpaint_sets, tmp_path)
    code, plan = eve("retrain", "--config", str(config), "--dry-run", *TEST_SIZE)
    assert code == 0, plan
    assert "captions: Hugging Face image folder" in plan and "'file_name'" in plan and "'text'" in plan
    assert "conversations: image folder" in plan and "llava.json" in plan
    assert "image at least 14 x 14 px" in plan and "every filtered image kept" in plan  # production rules
    assert re.findall(r"stage (\S+)\s+(\w+)", plan) == [("base-llm", "train"), ("1", "train"), ("2", "train"), ("3", "train")]

    started = time.monotonic()
    code, output = eve("retrain", "--config", str(config), *TEST_SIZE)
    assert code == 0, output[-4000:]
    print(f"own-data retrain: {time.monotonic() - started:.0f} s")

    registry = ModelRegistry.default()
    version = re.search(r"candidate: eve@(v[\d.]+)", output).group(1)
    lineage = read_lineage(registry.repo_dir, f"eve@{version}")
    datasets = {d.role: d for d in lineage.datasets}
    assert {"ingested", "curated", "captioned", "filtered", "sft", "sft-filtered", "sft-mixture"} <= set(datasets)
    assert [s.name for s in lineage.stages] == ["stage-base-llm", "stage-1", "stage-2", "stage-3"]
    # Stage 3 trains on the SFT mixture of the gated conversations and the gated captions.
    assert lineage.stages[-1].input_dataset_hash == datasets["sft-mixture"].dataset_hash
    assert sorted(datasets["sft-mixture"].derived_from) == sorted(
        [datasets["sft-filtered"].dataset_hash, datasets["filtered"].dataset_hash])
    # The raw sources are the folders the data came from, by their own content hash (not the shards).
    raw = {r.role: r for r in lineage.raw_sources}
    assert set(raw) == {"raw", "raw-sft"} and raw["raw"].location.startswith(str(tmp_path / "photos"))
    assert datasets["ingested"].derived_from == [raw["raw"].dataset_hash] != [datasets["ingested"].dataset_hash]

    from tasks.data.versioning import DatasetRegistry

    ingested = DatasetRegistry.from_settings().find(datasets["ingested"].dataset_hash)
    manifest = json.loads((Path(DatasetRegistry.from_settings().checkout(ingested.tag)) / "manifest.json").read_text())
    sources = manifest["extra"]["sources"]
    assert sources[0]["location"] == str(tmp_path / "photos") and sources[0]["kind"] == "auto"
    assert manifest["extra"]["validation"]["min_width_pixels"] == 14  # production rules, not the demo's 64 px
    # every stamp of the set was read (none quarantined as a path problem, as the old reader did)
    ingest_reports = list((eve_home / "staging").glob("ingest-*/ingest_report.json"))
    reports = [json.loads(path.read_text()) for path in ingest_reports]
    captions_report = next(r for r in reports if r["num_in"] == 36)
    assert captions_report["num_in"] == captions_report["num_accepted"] + captions_report["num_quarantined"]
    assert "unsafe_path" not in captions_report["quarantined_by_reason"]
    assert captions_report["num_accepted"] >= 34

    # the caption gate ran the short-label profile on the stamps' own descriptions and passed
    assert lineage.quality is not None and lineage.quality.success
    stored = [json.loads(p.read_text()) for p in (eve_home / "quality" / lineage.quality.dataset_hash).rglob("gate_result.json")]
    assert [r["profile"] for r in stored if r["suite_name"] == "eve-caption-quality"] == ["short-labels"]
    assert lineage.caption.identity.backend == "source"

    # unchanged inputs: the plan now reuses every stage it just trained
    code, plan = eve("retrain", "--config", str(config), "--dry-run", *TEST_SIZE)
    assert code == 0, plan
    assert [action for _, action in re.findall(r"stage (\S+)\s+(\w+)", plan)] == ["reuse"] * 4, plan


def _flow_runs(deployment_id):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _registered_events(api_url: str, auth: str, since: datetime) -> list[dict]:
    """``eve.dataset.registered`` events since ``since`` (the server is shared by the session's tests:
    an earlier test's registrations must not count here)."""
    import httpx

    response = httpx.post(f"{api_url}/events/filter", auth=tuple(auth.split(":", 1)), timeout=30,
                          json={"filter": {"event": {"name": ["eve.dataset.registered"]},
                                           "occurred": {"since": since.isoformat()}}, "limit": 50})
    response.raise_for_status()
    return response.json()["events"]


def _wait(predicate, timeout_seconds: float, every: float = 3.0):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


def test_a_newly_ingested_version_triggers_exactly_one_retrain_which_trains_on_it(
    prefect_server, prefect_accounts, eve_home, tuxpaint_sets, tmp_path
):
    from prefect import get_client

    from flows.data_flow import DataFlowParams, data_pipeline
    from tasks.data.sources import SourceSpec
    from tasks.data.versioning import DatasetRegistry
    from tasks.orchestration import ensure_worker, is_recorded_process, stop_local_server
    from tasks.platform import PlatformSettings
    from tasks.registry import ModelRegistry

    # The team's configuration, test-sized with the same --set changes, given to the deployment.
    import argparse

    from cli.retrain import build_parameters, register

    started = datetime.now(timezone.utc)
    config = lay_out_as_the_readme(tuxpaint_sets, tmp_path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())  # the CLI's own reading of the same arguments
    params = build_parameters(parser.parse_args(["retrain", "--config", str(config), *TEST_SIZE]))
    deployed_config = tmp_path / "deployed.json"
    deployed_config.write_text(params.model_dump_json())

    # One command: the work pool and the deployment, its configuration read first (the worker runs
    # as a worker account here, started below; `eve deploy` without --no-worker starts its own).
    code, output = eve("deploy", "--config", str(deployed_config), "--only", "retrain-on-new-data", "--no-worker")
    assert code == 0, output
    assert "eve-retrain/retrain-on-new-data" in output and "on eve.dataset.registered" in output
    worker = ensure_worker(PlatformSettings.load(), auth_string=prefect_accounts.auth("eve-worker", kind="worker"))
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("eve-retrain/retrain-on-new-data")
        assert deployment.parameters == {"config": str(deployed_config)}

        # New data arrives the way a team brings it: an ingest of another folder of stamps.
        code, output = eve("data", "ingest", "--location", str(tuxpaint_sets["b"]), "--name", "photos")
        assert code == 0, output
        announced = DatasetRegistry.from_settings().list_versions("photos-raw")
        assert len(announced) == 1
        tag = announced[0].tag

        runs = _wait(lambda: [r for r in _flow_runs(deployment.id) if r.state and r.state.is_final()], 1500, every=5)
        assert len(runs) == 1, [(r.name, r.state) for r in _flow_runs(deployment.id)]
        run = runs[0]
        assert run.parameters["dataset"] == tag and run.parameters["config"] == str(deployed_config)
        assert run.state.is_completed(), run.state.message

        # It trained on the announced version: the registered candidate's lineage starts from it.
        versions = ModelRegistry.default().show()
        assert len(versions) == 1
        lineage = ModelRegistry.default().lineage(versions[0].version)
        assert {d.role: d.dataset_hash for d in lineage.datasets}["ingested"] == announced[0].dataset_hash

        # A retrain's own registrations never start a retrain: a new raw version registered by a
        # retrain, and the same version ingested again, both leave the run count at one.
        data_pipeline(DataFlowParams(dataset_name="photos", sources=[SourceSpec(location=str(tuxpaint_sets["a"]))],
                                     curate=False), registered_by="retrain")
        code, output = eve("data", "ingest", "--location", str(tuxpaint_sets["b"]), "--name", "photos")
        assert code == 0, output
        auth = os.environ["PREFECT_API_AUTH_STRING"]
        events = _wait(lambda: [e for e in _registered_events(prefect_server, auth, started)
                                if e["resource"]["prefect.resource.id"] == "eve.dataset.photos-raw"
                                and e["resource"].get("eve.dataset.registered-by") == "retrain"], 60)
        assert events, "the retrain's own registration was not announced at all"
        raw_events = [e for e in _registered_events(prefect_server, auth, started)
                      if e["resource"]["prefect.resource.id"] == "eve.dataset.photos-raw"]
        by = sorted(e["resource"]["eve.dataset.registered-by"] for e in raw_events)
        assert by == ["ingest", "retrain"], by  # the repeated ingest registered nothing new: no event
        time.sleep(20)  # triggers fire within seconds of the event
        assert len(_flow_runs(deployment.id)) == 1
    finally:
        stop_local_server()  # the worker this test started, and only it
    assert not is_recorded_process(worker)
