"""The platform's deployments, defined once in ``prefect.yaml`` and applied from there.

``prefect deploy --all`` (run from the checkout, ``EVE_PLATFORM_CHECKOUT`` set) applies the same
file; ``apply_deployments`` does it in-process for the platform's own commands (``eve deploy``, a
second or two instead of a CLI start per deployment), with the checkout as the code source of every
run. Every retrain deployment names its configuration in its ``config`` parameter (a recipe or a
file, ``flows.recipes.named_config``); ``apply_deployments(config=...)`` points them all at another
file, and ``deployment_configs`` reads each one first, so a configuration that does not validate is
refused before anything is applied.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import yaml

from tasks.platform import REPO_ROOT

PREFECT_YAML = REPO_ROOT / "prefect.yaml"


def deployment_specs(path: Path = PREFECT_YAML) -> dict[str, dict[str, Any]]:
    """The ``deployments`` entries of ``prefect.yaml`` by name."""
    return {spec["name"]: spec for spec in yaml.safe_load(path.read_text())["deployments"]}


def _schedules(spec: dict[str, Any]) -> list:
    from prefect.schedules import Cron

    return [
        Cron(entry["cron"], timezone=entry.get("timezone"), active=entry.get("active", True))
        for entry in spec.get("schedules") or []
    ]


def _triggers(spec: dict[str, Any]) -> list:
    from prefect.events import DeploymentEventTrigger

    triggers = []
    for entry in spec.get("triggers") or []:
        if entry.get("type") != "event":
            raise ValueError(f"deployment {spec['name']!r}: only event triggers are supported, got {entry.get('type')!r}")
        triggers.append(DeploymentEventTrigger(**{key: value for key, value in entry.items() if key != "type"}))
    return triggers


def with_config(spec: dict[str, Any], config: str | None) -> dict[str, Any]:
    """``spec`` with its ``config`` parameter replaced by ``config`` (deployments that name one, except
    the one meant to run the demo); unchanged when ``config`` is None."""
    parameters = dict(spec.get("parameters") or {})
    if config is None or "config" not in parameters or parameters["config"] == "demo":
        return spec
    return {**spec, "parameters": {**parameters, "config": config}}


def deployment_configs(names: list[str] | None = None, config: str | None = None) -> dict[str, str]:
    """Deployment name -> the configuration it runs, each read and validated (``ParameterFileError``
    naming the deployment and every problem). Deployments without a configuration are left out."""
    from flows.recipes import named_config

    named = {}
    for name, spec in deployment_specs().items():
        value = (with_config(spec, config).get("parameters") or {}).get("config")
        if value is None or (names and name not in names):
            continue
        try:
            named_config(value)
        except ValueError as error:
            raise type(error)(f"deployment {name}: {error}") from None
        named[name] = value
    return named


def _concurrency_limit(spec: dict[str, Any]):
    """The deployment's ``concurrency_limit`` (limit + collision strategy), as ``prefect deploy`` reads it."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    declared = spec.get("concurrency_limit")
    return ConcurrencyLimitConfig.model_validate(declared) if isinstance(declared, dict) else declared


def apply_deployments(names: list[str] | None = None, source: Path = REPO_ROOT, config: str | None = None) -> list[str]:
    """Create or update the named deployments (all when None) on the configured Prefect server;
    returns their ``flow/deployment`` names. ``config``: the configuration file the retrain
    deployments run instead of the one prefect.yaml names. Their work pools must exist
    (``ensure_work_pool``)."""
    from prefect import flow

    specs = deployment_specs()
    unknown = sorted(set(names or []) - set(specs))
    if unknown:
        raise ValueError(f"no deployment {unknown} in {PREFECT_YAML}; known: {sorted(specs)}")
    applied = []
    for name in names or list(specs):
        spec = with_config(specs[name], config)
        loaded = flow.from_source(source=str(source), entrypoint=spec["entrypoint"])
        with contextlib.redirect_stdout(io.StringIO()):  # deploy() prints a table meant for the CLI
            loaded.deploy(
                name=name,
                work_pool_name=spec["work_pool"]["name"],
                description=spec.get("description"),
                parameters=spec.get("parameters") or {},
                schedules=_schedules(spec),
                triggers=_triggers(spec),
                concurrency_limit=_concurrency_limit(spec),
                print_next_steps=False,
                ignore_warnings=True,
            )
        applied.append(f"{loaded.name}/{name}")
    return applied


__all__ = ["PREFECT_YAML", "apply_deployments", "deployment_configs", "deployment_specs", "with_config"]
