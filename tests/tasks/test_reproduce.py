"""``eve reproduce`` (issue 20): a tiny registered run (source captions, caption gate, bootstrap and
stage 1 on CPU) re-executed from its lineage manifest alone reproduces every hash bit-exactly; a shard
byte changed in a recorded dataset, and a recorded stage config edited, are each named with exit 1.
The data steps (raw sources, ingests, curation, instruction gate, SFT mixture) re-run from what each
version recorded of itself; a changed raw source and an edited curation config are each named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main as eve
from eve_model.identity import platform_commit
from eve_model.training.config import StageId, StageOverrides
from tasks.caption.config import CaptionConfig
from tasks.caption.run import caption_dataset
from tasks.lineage.assemble import _stage_record
from tasks.lineage.schema import CaptionRunRef, DatasetRef, QualityReportRef, build_lineage_manifest
from tasks.lineage.store import lineage_path
from tasks.platform import REPO_ROOT, PlatformSettings
from tasks.quality.config import CaptionGateThresholds
from tasks.quality.gate import gate_caption_dataset
from tasks.registry import ModelRegistry
from tasks.reproduce import code_revision_plan, levels_through
from tasks.stages import TrainedStage, TrainingParameters, plan_stage, run_stage
from tasks.submit.spec import JobSpec
from tests.eve_model.training_datasets import write_tiny_dataset
from tests.fixtures.model_registry import passing_gate

_TINY = dict(global_batch_size_samples=4, micro_batch_size_samples=4, max_sequence_length_tokens=96,
             checkpoint_interval_steps=1, wandb_mode="disabled")


def test_levels_and_the_code_revision_plan():
    assert levels_through("gates") == ["data", "captions", "gates"]
    assert levels_through("all")[-1] == "stage-3"
    with pytest.raises(ValueError):
        levels_through("stage-4")
    assert code_revision_plan("abc", "abc")[0] == "here"
    assert code_revision_plan("abc", "def")[0] == "worktree"
    assert code_revision_plan("abc+dirty", "abc+dirty")[0] == "dirty"


def test_a_recorded_revision_that_cannot_be_checked_out_is_reported_not_skipped(eve_home, registry_inputs, capsys):
    registry = ModelRegistry(PlatformSettings.load())
    registry.register_candidate(*registry_inputs(1), passing_gate())  # code_revision: a commit no repository has
    assert eve(["reproduce", "eve@v0.1.0", "--through", "data"]) == 1
    out = capsys.readouterr().out
    assert "CANNOT RE-RUN eve@v0.1.0: cannot check out recorded revision 0123456789abcdef" in out, out


def _verdicts(out: str) -> dict[tuple[str, str], str]:
    """(level, artifact) -> verdict of the report table's rows (``tasks.reproduce.format_row`` columns)."""
    return {(line[19:28].strip(), line[29:57].strip()): line[2:18].strip()
            for line in out.splitlines() if line[:2] == "  " and line[2:3].isupper()}


def _local_training(tmp_path: Path) -> TrainingParameters:
    return TrainingParameters(
        job=JobSpec(name="reproduce", command=["eve_model.train"], workdir=REPO_ROOT, tasks_per_node=1,
                    time_limit_minutes=10, log_dir=tmp_path / "logs", pre_timeout_signal_seconds=0),
        stage_overrides={StageId.BASE_LLM: StageOverrides(max_steps=2, **_TINY),
                         StageId.PREALIGN: StageOverrides(max_steps=1, **_TINY)},
    )


def _register_tiny_run(tmp_path: Path, training: TrainingParameters | None = None) -> ModelRegistry:
    """curated -> source captions -> caption gate -> base-llm -> stage 1, registered as eve@v0.1.0;
    the stages run on ``training``'s backend (local by default)."""
    curated = tmp_path / "curated"
    curated_hash = write_tiny_dataset(curated, num_samples=8, items_per_shard=4).dataset_hash
    captioned = caption_dataset(curated, tmp_path / "captioned", CaptionConfig(backend="source"), progress=False)
    thresholds = CaptionGateThresholds(max_duplicate_rate=1.0, max_filtered_fraction=1.0)
    gate = gate_caption_dataset(captioned.output_location, tmp_path / "filtered", thresholds, compare_with_latest=False)
    assert gate.passed, gate.reasons
    training = training or _local_training(tmp_path)
    trained, parent = [], None
    for stage in (StageId.BASE_LLM, StageId.PREALIGN):
        planned = plan_stage.fn(stage, training, gate.output_location, gate.output_dataset_hash, parent)
        parent = run_stage(planned, training, timeout_seconds=600)
        trained.append(TrainedStage(planned=planned, result=parent))
    manifest = build_lineage_manifest(
        code_revision=platform_commit(),
        raw_sources=[DatasetRef(role="raw", dataset_hash=curated_hash, location=str(curated), num_items=8)],
        datasets=[
            DatasetRef(role="captioned", dataset_hash=captioned.output_dataset_hash,
                       location=captioned.output_location, derived_from=[curated_hash]),
            DatasetRef(role="filtered", dataset_hash=gate.output_dataset_hash, location=gate.output_location,
                       derived_from=[captioned.output_dataset_hash]),
        ],
        caption=CaptionRunRef(identity=captioned.identity, output_dataset_hash=captioned.output_dataset_hash),
        quality=QualityReportRef(suite_name=gate.suite_name, suite_version=gate.suite_version,
                                 dataset_hash=gate.input_dataset_hash, success=True, thresholds=gate.thresholds),
        stages=[_stage_record(t) for t in trained],
    )
    registry = ModelRegistry(PlatformSettings.load())
    registry.register_candidate(Path(parent.model_dir), manifest, passing_gate())
    return registry


@pytest.mark.slow
def test_a_registered_run_reproduces_bit_exactly_and_tampering_is_named(eve_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    registry = _register_tiny_run(tmp_path)
    capsys.readouterr()

    assert eve(["reproduce", "eve@v0.1.0", "--through", "stage-1"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    verdicts = _verdicts(out)
    for row in [("data", "dataset/raw"), ("data", "dataset/captioned"), ("captions", "dataset/captioned"),
                ("gates", "dataset/filtered"), ("stage-1", "stage-base-llm weights"), ("stage-1", "stage-1 weights")]:
        assert verdicts.get(row) == "IDENTICAL", (row, out)
    assert "MISMATCH" not in out

    # A recorded stage config edited after registration: named before anything trains.
    path = lineage_path(registry.repo_dir, "eve", "v0.1.0")
    original = path.read_text()
    edited = json.loads(original)
    edited["stages"][0]["config"]["max_steps"] = 3
    path.write_text(json.dumps(edited))
    assert eve(["reproduce", "eve@v0.1.0", "--through", "stage-1"]) == 1
    assert "MISMATCH: stage-base-llm config of eve@v0.1.0" in capsys.readouterr().out
    path.write_text(original)

    # One byte of a recorded dataset's shard changed: the data level names the dataset.
    manifest = registry.lineage("v0.1.0")
    captioned = next(d for d in manifest.datasets if d.role == "captioned")
    shard = sorted((Path(captioned.location) / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert eve(["reproduce", "eve@v0.1.0", "--through", "data"]) == 1
    assert "MISMATCH: dataset/captioned of eve@v0.1.0" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_trained_through_slurm_reproduces_on_the_local_backend(slurm_cluster, eve_home, tmp_path, monkeypatch,
                                                                      capsys):
    """The same stages through sbatch on the real test cluster and re-run locally: identical weights."""
    from tests.eve_model.training_datasets import subprocess_env

    monkeypatch.setenv("WANDB_MODE", "disabled")
    local = _local_training(tmp_path)
    environment = subprocess_env(eve_home, WANDB_MODE="disabled")
    job = local.job.model_copy(update={
        "env": {key: environment[key] for key in ("EVE_HOME", "WANDB_MODE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                  "PYTHONPATH", "TORCH_EXTENSIONS_DIR")},
        "checkpoint_save_seconds": 10, "max_step_seconds": 30,
    })
    slurm = local.model_copy(update={"backend": "slurm", "job": job,
                                     "backend_options": {"slurm_conf": str(slurm_cluster.slurm_conf)}})
    registry = _register_tiny_run(tmp_path, slurm)
    manifest = registry.lineage("v0.1.0")
    assert [s.scheduler for s in manifest.stages] == ["slurm", "slurm"]
    assert all(job_id.isdigit() for s in manifest.stages for job_id in s.job_ids)
    capsys.readouterr()

    assert eve(["reproduce", "eve@v0.1.0", "--through", "stage-1"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    verdicts = _verdicts(out)
    for stage in manifest.stages:
        assert verdicts[("stage-1", f"{stage.name} weights")] == "IDENTICAL", out
        line = next(row for row in out.splitlines() if row[2:3].isupper() and row[29:57].strip() == f"{stage.name} weights")
        assert stage.weights_sha256[:20] in line and "local backend" in line, out


def _register_tiny_data_run(tmp_path: Path) -> tuple[ModelRegistry, dict[str, str]]:
    """Every data step of a retrain on a tiny demo-shaped source: ingest (captions and conversations),
    curation (thumbnail k-means), source captions, caption gate, instruction gate, SFT mixture;
    registered as eve@v0.1.0 with stand-in weights (no stage: the data levels only).
    Returns the registry and role -> the version's directory."""
    from tasks.data.curate import CurationConfig, curate_dataset
    from tasks.data.demo_source import DemoDataConfig, demo_sources, generate_demo_data
    from tasks.data.sft_mixture import SftMixtureConfig, build_sft_mixture
    from tasks.data.steps import ingest_sources
    from tasks.data.validate import ValidationConfig
    from tasks.quality.config import InstructionGateThresholds
    from tasks.quality.gate import gate_instruction_dataset
    from tests.fixtures.model_registry import write_tiny_weights

    sources = demo_sources(generate_demo_data(tmp_path / "source", DemoDataConfig.tiny()))
    ingested = ingest_sources(sources.captions, ValidationConfig.demo(), max_items_per_shard=8)
    sft = ingest_sources(sources.sft, ValidationConfig.demo().model_copy(update={"require_caption": False}),
                         max_items_per_shard=8)
    curated = curate_dataset(ingested.dataset_dir, tmp_path / "curated",
                             CurationConfig(embedder="thumbnail", num_clusters=4, keep_per_cluster=4))
    assert 0 < curated.num_kept < curated.num_in, curated  # k-means really dropped some: a config that matters
    captioned = caption_dataset(curated.dataset_dir, tmp_path / "captioned",
                                CaptionConfig(backend="source", source_field="true_caption"), progress=False)
    gate = gate_caption_dataset(captioned.output_location, tmp_path / "filtered",
                                CaptionGateThresholds(max_duplicate_rate=1.0, max_filtered_fraction=1.0),
                                compare_with_latest=False)
    sft_gate = gate_instruction_dataset(sft.dataset_dir, tmp_path / "sft-filtered", InstructionGateThresholds(),
                                        compare_with_latest=False)
    assert gate.passed and sft_gate.passed, (gate.reasons, sft_gate.reasons)
    mixture = build_sft_mixture(sft_gate.output_location, gate.output_location, tmp_path / "sft-mixture",
                                SftMixtureConfig(max_items_per_shard=4))

    raw = DatasetRef(role="raw", dataset_hash=ingested.source_content_sha256, location=sources.captions[0].location)
    raw_sft = DatasetRef(role="raw-sft", dataset_hash=sft.source_content_sha256, location=sources.sft[0].location)
    chain = [  # role, hash, location, parents
        ("ingested", ingested.dataset_hash, ingested.dataset_dir, [raw.dataset_hash]),
        ("curated", curated.dataset_hash, curated.dataset_dir, [ingested.dataset_hash]),
        ("captioned", captioned.output_dataset_hash, captioned.output_location, [curated.dataset_hash]),
        ("filtered", gate.output_dataset_hash, gate.output_location, [captioned.output_dataset_hash]),
        ("sft", sft.dataset_hash, sft.dataset_dir, [raw_sft.dataset_hash]),
        ("sft-filtered", sft_gate.output_dataset_hash, sft_gate.output_location, [sft.dataset_hash]),
        ("sft-mixture", mixture.dataset_hash, mixture.dataset_dir, [sft_gate.output_dataset_hash, gate.output_dataset_hash]),
    ]
    manifest = build_lineage_manifest(
        code_revision=platform_commit(),
        raw_sources=[raw, raw_sft],
        datasets=[DatasetRef(role=role, dataset_hash=h, location=str(where), derived_from=parents)
                  for role, h, where, parents in chain],
        caption=CaptionRunRef(identity=captioned.identity, output_dataset_hash=captioned.output_dataset_hash),
        quality=QualityReportRef(suite_name=gate.suite_name, suite_version=gate.suite_version,
                                 dataset_hash=gate.input_dataset_hash, success=True, thresholds=gate.thresholds),
        instruction_quality=QualityReportRef(suite_name=sft_gate.suite_name, suite_version=sft_gate.suite_version,
                                             dataset_hash=sft_gate.input_dataset_hash, success=True,
                                             thresholds=sft_gate.thresholds),
    )
    registry = ModelRegistry(PlatformSettings.load())
    registry.register_candidate(write_tiny_weights(tmp_path / "weights", 1), manifest, passing_gate())
    return registry, {role: str(where) for role, _, where, _ in chain} | {"raw": raw.location}


_DATA_STEPS = [("data", "raw source"), ("data", "raw-sft source"), ("data", "ingest: dataset/ingested"),
               ("data", "curation: dataset/curated"), ("data", "ingest: dataset/sft")]
_GATE_STEPS = [("captions", "dataset/captioned"), ("gates", "dataset/filtered"), ("gates", "dataset/sft-filtered"),
               ("gates", "dataset/sft-mixture")]


def test_the_data_steps_re_run_from_what_each_version_recorded(eve_home, tmp_path, capsys):
    _registry, locations = _register_tiny_data_run(tmp_path)
    capsys.readouterr()

    assert eve(["reproduce", "eve@v0.1.0", "--through", "gates"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    verdicts = _verdicts(out)
    for row in _DATA_STEPS + _GATE_STEPS + [("data", f"dataset/{role}") for role in
                                             ("ingested", "curated", "captioned", "filtered", "sft", "sft-filtered",
                                              "sft-mixture")]:
        assert verdicts.get(row) == "IDENTICAL", (row, out)
    assert "CANNOT RE-RUN" not in out and "MISMATCH" not in out, out

    # The curation config the curated version records, edited: its re-run no longer gives the recorded hash.
    manifest_path = Path(locations["curated"]) / "manifest.json"
    original = manifest_path.read_text()
    edited = json.loads(original)
    edited["extra"]["curation"]["keep_per_cluster"] = 1
    manifest_path.write_text(json.dumps(edited))
    assert eve(["reproduce", "eve@v0.1.0", "--through", "data"]) == 1
    assert "MISMATCH: curation: dataset/curated of eve@v0.1.0" in capsys.readouterr().out
    manifest_path.write_text(original)

    # One caption of the raw source changed since the ingest: the raw source is named before anything else.
    records = Path(locations["raw"]) / "captions.jsonl"
    lines = records.read_text().splitlines()
    first = json.loads(lines[0])
    first["caption"] = first["caption"] + " (edited)"
    records.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert eve(["reproduce", "eve@v0.1.0", "--through", "data"]) == 1
    assert "MISMATCH: raw source of eve@v0.1.0" in capsys.readouterr().out


def test_a_version_that_does_not_record_how_it_was_made_is_reported_not_skipped(eve_home, tmp_path):
    """Data versions without their sources or curation config, and a lineage without the instruction gate's
    thresholds (both written before these were recorded): each step says why it cannot re-run."""
    from tasks.reproduce import Verdict, reproduce_version

    datasets = {}
    for role in ("ingested", "curated", "sft", "sft-filtered"):
        datasets[role] = write_tiny_dataset(tmp_path / role, num_samples=2 + len(datasets), items_per_shard=2)
    raw = DatasetRef(role="raw", dataset_hash="unrecorded-source-of-x", location="the raw source of x was not recorded")
    manifest = build_lineage_manifest(
        code_revision="abc", raw_sources=[raw],
        datasets=[DatasetRef(role=role, dataset_hash=m.dataset_hash, location=str(tmp_path / role)) for role, m in
                  datasets.items()],
    )
    report = reproduce_version(manifest, "gates", PlatformSettings.load(), current_revision="abc")
    rows = {row.artifact: row for row in report.rows}
    for artifact in ("ingest: dataset/ingested", "curation: dataset/curated", "ingest: dataset/sft", "raw source",
                     "dataset/sft-filtered"):
        assert rows[artifact].verdict == Verdict.CANNOT_RERUN and rows[artifact].detail, (artifact, report.rows)
    assert "does not record" in rows["ingest: dataset/ingested"].detail
    assert "instruction gate" in rows["dataset/sft-filtered"].detail
    assert report.first_mismatch is None


def test_the_demo_source_is_checked_by_its_dvc_md5_and_re_read_in_this_checkout(eve_home, tmp_path):
    """The bundled demo's ingest, recorded by a checkout elsewhere: reproduce compares ``data/`` with the
    recorded ``data.dvc`` md5 and re-reads the demo from this checkout's ``data/demo``; a different
    recorded md5 is a mismatch named ``raw source`` before any ingest runs."""
    from tasks.data.demo_source import demo_sources, ensure_demo_data, recorded_data_md5
    from tasks.data.steps import ingest_sources
    from tasks.data.validate import ValidationConfig
    from tasks.reproduce import DEMO_RAW_LOCATION, Verdict, reproduce_version

    ingested = ingest_sources(demo_sources(ensure_demo_data()).captions, ValidationConfig.demo())
    manifest_path = Path(ingested.dataset_dir) / "manifest.json"
    recorded = json.loads(manifest_path.read_text())
    for source in recorded["extra"]["sources"]:  # as another checkout recorded it
        source["location"] = source["location"].replace(str(REPO_ROOT), "/elsewhere/checkout")
    manifest_path.write_text(json.dumps(recorded))
    md5 = recorded_data_md5(REPO_ROOT / "data.dvc")

    def lineage(raw_md5: str):
        return build_lineage_manifest(
            code_revision="abc",
            raw_sources=[DatasetRef(role="raw", dataset_hash=raw_md5, location=DEMO_RAW_LOCATION, dvc_md5=raw_md5)],
            datasets=[DatasetRef(role="ingested", dataset_hash=ingested.dataset_hash, location=ingested.dataset_dir,
                                 derived_from=[raw_md5])],
        )

    report = reproduce_version(lineage(md5), "data", PlatformSettings.load(), current_revision="abc")
    rows = {row.artifact: row for row in report.rows}
    assert rows["raw source"].verdict == Verdict.IDENTICAL and rows["raw source"].reproduced == md5, report.rows
    assert rows["ingest: dataset/ingested"].verdict == Verdict.IDENTICAL, report.rows
    assert report.first_mismatch is None

    report = reproduce_version(lineage("0" * 32 + ".dir"), "data", PlatformSettings.load(), current_revision="abc")
    assert report.first_mismatch is not None and report.first_mismatch.artifact == "raw source", report.rows
    assert "ingest: dataset/ingested" not in {row.artifact for row in report.rows}
