"""The data executor switch in a retrain's configuration file: read strictly into the typed model, reachable
with --set, refused with the field named when wrong, and local (no cluster) unless a file says otherwise."""

from __future__ import annotations

import pytest

from flows.parameter_files import ParameterFileError
from flows.recipes import RECIPES, load_retrain_config, parse_retrain_config

CONFIG = """
recipe: demo
parameters:
  data:
    executor:
      kind: dask-slurm
      workers: 16
      items_per_task: 1000
      slurm: {partition: cpu, walltime_minutes: 480, job_script_prologue: ["source /shared/venv/bin/activate"]}
"""


def test_every_recipe_runs_the_data_steps_in_process_by_default() -> None:
    assert {name: recipe().data.executor.kind for name, recipe in RECIPES.items()} == {name: "local" for name in RECIPES}


def test_a_configuration_file_moves_the_data_steps_onto_dask_over_slurm(tmp_path) -> None:
    from tasks.data.executor import dask_task_runner

    path = tmp_path / "retrain.yaml"
    path.write_text(CONFIG)
    executor = load_retrain_config(path).data.executor
    assert (executor.kind, executor.workers, executor.slurm.partition) == ("dask-slurm", 16, "cpu")
    runner = dask_task_runner(executor)
    assert runner.cluster_kwargs["walltime"] == "08:00:00"
    assert runner.cluster_kwargs["job_script_prologue"] == ["source /shared/venv/bin/activate"]

    switched = load_retrain_config(path, overrides=["data.executor.kind=dask-local", "data.executor.workers=3"])
    assert (switched.data.executor.kind, switched.data.executor.workers) == ("dask-local", 3)


def test_a_wrong_executor_is_refused_naming_the_field() -> None:
    with pytest.raises(ParameterFileError) as raised:
        parse_retrain_config({"recipe": "demo", "parameters": {"data": {"executor": {"kind": "dask-slrum"}}}})
    assert "data.executor.kind" in str(raised.value) and "dask-slurm" in str(raised.value)
