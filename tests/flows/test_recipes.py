"""Recipes and deployments cannot rot: every recipe builds and round-trips through the flow's own
parameter validation, and every deployment in prefect.yaml names a real flow with valid parameters."""

from __future__ import annotations

import importlib
import json

import pytest

from flows.deployments import deployment_specs
from flows.parameters import RetrainParameters
from flows.recipes import RECIPES


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_and_validates_as_the_retrain_flow_parameter(name):
    from flows.retrain_flow import retrain

    params = RECIPES[name]()
    assert isinstance(params, RetrainParameters)
    # What a deployment or the UI would send: JSON, validated by Prefect against the flow's signature.
    as_json = json.loads(params.model_dump_json())
    validated = retrain.validate_parameters({"params": as_json})["params"]
    assert RetrainParameters.model_validate(validated) == params


def test_the_paper_recipes_differ_only_in_where_they_run():
    slurm, k8s = RECIPES["paper-slurm"](), RECIPES["paper-k8s"]()
    assert (slurm.training.backend, k8s.training.backend) == ("slurm", "k8s")
    assert slurm.training.job.partition == "gpu" and k8s.training.job.container_image
    # SLURM attempts end at the partition's limit (flushed, resubmitted); Kubernetes sets no deadline.
    assert slurm.training.job.time_limit_minutes == 48 * 60 and k8s.training.job.time_limit_minutes is None
    ignore = {"partition", "container_options", "time_limit_minutes"}
    assert slurm.training.job.model_dump(exclude=ignore) == k8s.training.job.model_dump(exclude=ignore)
    assert slurm.training.job.world_size == 32 and slurm.training.preset == "eve_7b"


def _caller_supplied(name: str) -> dict:
    """Parameters a deployment leaves to whoever creates its runs (the retrain, for a promotion)."""
    if name == "promote":
        from tests.fixtures.promotion_runs import promotion_request

        return {"request": json.loads(promotion_request().model_dump_json())}
    return {}


@pytest.mark.parametrize("name", sorted(deployment_specs()))
def test_every_deployment_names_a_flow_and_valid_parameters(name):
    spec = deployment_specs()[name]
    path, _, function = spec["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    flow.validate_parameters({**_caller_supplied(name), **(spec.get("parameters") or {})})
    for trigger in spec.get("triggers") or []:
        flow.validate_parameters({**_caller_supplied(name), **(trigger.get("parameters") or {})})


# ------------------------------------------------------------------------ configuration files


def _eve(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_print_config_writes_a_file_that_reads_back_to_the_recipe_and_plans(name, tmp_path, eve_home):
    code, printed, _ = _eve("retrain", "--print-config", name)
    assert code == 0
    config = tmp_path / f"{name}.yaml"
    config.write_text(printed)
    from flows.recipes import load_retrain_config

    assert load_retrain_config(config) == RECIPES[name]()
    # every field is written, each with its meaning above it
    assert "# Stop after this many optimizer steps" in printed or name != "demo"
    assert "\n  validation:\n    # Smallest accepted width" in printed
    code, plan, err = _eve("retrain", "--config", str(config), "--dry-run")
    assert code == 0, err
    assert "stage 3" in plan and "resources:" in plan


def test_a_config_with_a_typo_or_a_wrong_value_is_refused_naming_the_field(tmp_path, eve_home):
    config = tmp_path / "bad.yaml"
    config.write_text("recipe: demo\nparameters:\n  caption_qualty: {profile: short-labels}\n"
                      "  training: {backend: slrum}\n")
    code, _, err = _eve("retrain", "--config", str(config), "--dry-run")
    assert code == 2
    assert "caption_qualty: unknown field; did you mean caption_quality?" in err
    assert "training.backend: Input should be 'local', 'slurm' or 'k8s' (got \"slrum\")" in err
    config.write_text("data: {sources: [{location: /x, kind: folder}], dataset_name: x}\n")
    code, _, err = _eve("retrain", "--config", str(config), "--dry-run")
    assert code == 2 and "data.sources.0.kind: Input should be 'auto', 'image_folder', 'webdataset' or 'parquet'" in err
    config.write_text("data: {sources: [{location: /x}]}\n")
    code, _, err = _eve("retrain", "--config", str(config), "--dry-run")
    assert code == 2 and "data: dataset_name: required" in err
    code, _, err = _eve("retrain", "--recipe", "demo", "--set", "training.stage_overrides.3.max_stepz=2")
    assert code == 2 and "training.stage_overrides.3.max_stepz: unknown field; did you mean max_steps?" in err


def test_own_data_gets_production_defaults_and_the_demo_keeps_its_own(tmp_path):
    from flows.recipes import load_retrain_config
    from tasks.data.curate import CurationConfig
    from tasks.data.validate import ValidationConfig

    config = tmp_path / "mine.yaml"
    config.write_text("data: {dataset_name: photos, sources: [{location: ./photos}]}\n")
    params = load_retrain_config(config)
    assert params.data.validation == ValidationConfig() and params.data.curation == CurationConfig()
    assert params.data.sources[0].location == str(tmp_path / "photos")  # relative to the file
    demo = RECIPES["demo"]().data
    assert demo.validation == ValidationConfig.demo() and demo.curation == CurationConfig.demo() and demo.use_demo_source
    # what a training run needs is named before anything runs
    assert [line.split(":")[0] for line in params.missing_for_training()] == ["data.sft_sources", "evaluation.eval_questions_path"]
    from flows.parameter_files import ParameterFileError
    from flows.recipes import resolve_retrain_parameters

    with pytest.raises(ParameterFileError, match="data.sft_sources: stage 3"):
        resolve_retrain_parameters(RECIPES["demo"](), config=str(config))
    assert resolve_retrain_parameters(RECIPES["demo"](), config=str(config), training=False) == params
    with pytest.raises(ValueError, match="use_demo_source is true"):
        from flows.data_flow import DataFlowParams

        DataFlowParams(use_demo_source=True, sources=[{"location": "/x"}])


def test_flags_and_set_reach_the_thresholds_and_a_new_profile_brings_its_own(tmp_path):
    import argparse

    from cli.retrain import build_parameters, register
    from tasks.quality.config import CaptionGateThresholds

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args([
        "retrain", "--recipe", "demo", "--source", "photos", "--name", "photos", "--min-side", "32",
        "--caption-profile", "short-labels", "--curation-target", "1000", "--max-filtered-fraction", "0.1",
        "--gate-minimum", "demo_vqa/accuracy=0.25", "--set", "training.stage_overrides.3.max_steps=7",
    ])
    params = build_parameters(args)
    assert not params.data.use_demo_source and params.data.sources[0].location.endswith("/photos")
    assert params.data.validation.min_width_pixels == params.data.validation.min_height_pixels == 32
    assert params.data.curation.target_num_items == 1000
    # the profile's own thresholds, not the teacher profile's written out, plus the one flag
    assert params.caption_quality == CaptionGateThresholds(profile="short-labels", max_filtered_fraction=0.1)
    assert [(t.metric, t.minimum) for t in params.evaluation.gate.thresholds] == [("demo_vqa/accuracy", 0.25)]
    assert params.training.stage_overrides["3"].max_steps == 7 and params.training.stage_overrides["3"].learning_rates
    # the same in a printed file: changing the profile line changes the thresholds
    code, printed, _ = _eve("retrain", "--print-config", "demo")
    config = tmp_path / "c.yaml"
    config.write_text(printed.replace("profile: teacher-captions", "profile: short-labels"))
    from flows.recipes import load_retrain_config

    assert load_retrain_config(config).caption_quality == CaptionGateThresholds(profile="short-labels")


def test_a_registered_dataset_version_replaces_the_sources():
    from flows.recipes import with_dataset

    params = with_dataset(RECIPES["demo"](), "dataset/photos-raw/0123456789abcdef")
    data = params.data
    assert (data.dataset, data.sources, data.use_demo_source, data.dataset_name) == (
        "dataset/photos-raw/0123456789abcdef", [], False, "photos")
    with pytest.raises(ValueError, match="dataset_name: required"):
        with_dataset(RECIPES["demo"](), "3f9c0a1b2c3d4e5f")  # a hash does not say the name
    mine = RECIPES["paper-slurm"]()
    assert with_dataset(mine, "3f9c0a1b2c3d4e5f").data.dataset_name == "eve-cap"


def test_every_retrain_deployment_runs_a_named_config_and_the_trigger_passes_the_version():
    from flows.deployments import deployment_configs, with_config

    specs = deployment_specs()
    configs = deployment_configs()  # each one read and validated
    assert configs == {"weekly-retrain": "configs/retrain.yaml", "retrain-on-new-data": "configs/retrain.yaml",
                       "data-only": "configs/retrain.yaml", "train-from-stage": "configs/retrain.yaml",
                       "demo-retrain": "demo"}
    trigger = specs["retrain-on-new-data"]["triggers"][0]
    assert trigger["parameters"] == {"dataset": "{{ event.payload.tag }}"}
    assert trigger["match"]["eve.dataset.registered-by"] == "ingest"  # a retrain's own versions never match
    assert with_config(specs["weekly-retrain"], "/srv/mine.yaml")["parameters"]["config"] == "/srv/mine.yaml"
    assert with_config(specs["demo-retrain"], "/srv/mine.yaml")["parameters"]["config"] == "demo"
    assert "config" not in (with_config(specs["promote"], "/srv/mine.yaml").get("parameters") or {})


def test_the_readme_configuration_blocks_read_as_what_they_say():
    """A reader pastes the README's YAML: each block must read, and mean what its text says."""
    import re

    import yaml

    from flows.recipes import parse_retrain_config
    from tests.fixtures.prefect_server import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()

    def block(title: str) -> dict:
        section = readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))

    own = parse_retrain_config(block("Retrain on your own data"), "own data")
    assert own.captions.backend == "source" and own.caption_quality.profile == "short-labels"
    assert own.training.backend == "local" and not own.missing_for_training()
    cluster = parse_retrain_config(block("Use your cluster"), "cluster")
    assert cluster.training.backend == "slurm" and cluster.training.job.account == "vision"
    assert (cluster.training.job.nodes, cluster.training.job.gpus_per_node) == (4, 8)
    # the teacher block is added to a configuration of one's own
    teacher = parse_retrain_config({**block("Retrain on your own data"), **block("Use your teacher")}, "teacher")
    assert teacher.captions.backend == "openai" and teacher.captions.api_key_env == "TEACHER_API_KEY"
    assert teacher.caption_quality.profile == "teacher-captions"
def test_retrain_deployments_declare_their_concurrency_and_promotions_are_not_limited():
    """docs/operations.md, "Concurrency": one run per retrain deployment at a time, the next queued
    (never dropped); a promotion waits for its own decision, so promotions are never serialised."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.deployments import _concurrency_limit

    specs = deployment_specs()
    for name in ("weekly-retrain", "retrain-on-new-data", "data-only", "train-from-stage"):
        limit = _concurrency_limit(specs[name])
        assert isinstance(limit, ConcurrencyLimitConfig) and limit.limit == 1
        assert limit.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    assert _concurrency_limit(specs["promote"]) is None
