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
