"""Run a GX suite over a metrics table and turn its result into a gate decision.

GX does the checking; this module only reads GX's own result: the unexpected row indices of
each row rule (COMPLETE result format) and the success of each aggregate rule. The filtered
fraction is the one aggregate rule GX cannot state on the table itself (it depends on the union
of the row rules' verdicts), so it is checked here and reported beside GX's rules.

With ``data_docs_root`` the validation runs through a GX checkpoint whose stores live in that
folder (one per dataset version, ``tasks.quality.store``): GX keeps every validation result of the
version there and renders its Data Docs site, whose index lists them all.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    FilesystemStoreBackendDefaults,
    ProgressBarsConfig,
)

_RESULT_FORMAT = {"result_format": "COMPLETE", "return_unexpected_index_query": False, "exclude_unexpected_values": True}
"""Every unexpected row's index (the gate filters by them), not its value: the values are in the
stored metrics table, and listing them made GX's result (and its JSON) grow with the table."""


@dataclass
class RuleOutcome:
    """One rule's verdict: for a row rule, how many rows broke it (before reason priority)."""

    rule: str
    scope: str
    success: bool
    description: str
    unexpected_count: int = 0
    observed_value: Any = None
    bound: str = ""
    """The rule in force, e.g. ``num_words >= 3``."""


@dataclass
class TableDecision:
    """The decision on one metrics table: which rows are filtered and why, and whether it passes."""

    passed: bool
    reasons: list[str]
    filtered_reason: pd.Series
    """Per row (table order): the first broken row rule, or <NA> when the row is kept."""
    rules: list[RuleOutcome] = field(default_factory=list)
    gx_result: dict[str, Any] = field(default_factory=dict)
    """GX's validation result as JSON (``ExpectationSuiteValidationResult.to_json_dict()``)."""
    data_docs_page: str | None = None
    """file:// URL of this validation's page in the version's Data Docs (None: not rendered)."""

    @property
    def kept_mask(self) -> np.ndarray:
        return self.filtered_reason.isna().to_numpy()


def suite_columns(suite: gx.ExpectationSuite) -> list[str]:
    """The columns the suite's expectations read, in table order of first mention."""
    columns: list[str] = []
    for expectation in suite.expectations:
        for field_name in ("column", "column_A", "column_B", "column_list"):
            value = getattr(expectation, field_name, None)
            for column in [value] if isinstance(value, str) else (value or []):
                if column not in columns:
                    columns.append(column)
    return columns


def validation_frame(table: pd.DataFrame, suite: gx.ExpectationSuite) -> pd.DataFrame:
    """What GX validates: the columns its rules read, rows in table order (positions are the row
    indices GX reports). Every expectation reads only its own column(s), so the verdicts are those
    on the whole table; but GX fingerprints a batch by hashing every cell, and the caption text,
    keys and hashes made that most of the validation time at a million captions."""
    return table[suite_columns(suite)].reset_index(drop=True)


def run_suite(table: pd.DataFrame, suite: gx.ExpectationSuite) -> dict[str, Any]:
    """Validate ``table`` against ``suite`` in an ephemeral GX context; returns GX's result JSON."""
    context = gx.get_context(mode="ephemeral")
    # Our callers report progress themselves; GX's per-metric bars would flood task logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    name = f"{suite.name}-{uuid.uuid4().hex[:8]}"
    batch_definition = (
        context.data_sources.add_pandas(name=name)
        .add_dataframe_asset(name="metrics")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(suite)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )
    result = validation.run(batch_parameters={"dataframe": validation_frame(table, suite)}, result_format=_RESULT_FORMAT)
    return result.to_json_dict()


def run_suite_with_data_docs(
    table: pd.DataFrame, suite: gx.ExpectationSuite, data_docs_root: Path, run_name: str
) -> tuple[dict[str, Any], str | None]:
    """Validate through a checkpoint whose GX stores live under ``data_docs_root`` and update its
    Data Docs site. Returns (GX's result JSON, file:// URL of this validation's page).

    The stores and the site are shared by every run that gates this version: two runs at once take
    turns (``tasks.locks``), else one's ``add_or_update`` collides with the other's save."""
    from tasks.locks import exclusive

    with exclusive(data_docs_root / ".gx.lock", f"quality gate Data Docs of {run_name}", timeout_seconds=600):
        return _run_checkpoint(table, suite, data_docs_root, run_name)


def _run_checkpoint(
    table: pd.DataFrame, suite: gx.ExpectationSuite, data_docs_root: Path, run_name: str
) -> tuple[dict[str, Any], str | None]:
    data_docs_root.mkdir(parents=True, exist_ok=True)
    config = DataContextConfig(
        store_backend_defaults=FilesystemStoreBackendDefaults(root_directory=str(data_docs_root)),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    name = f"{suite.name}-{suite.meta.get('suite_version', '')}"
    batch_definition = (
        context.data_sources.add_pandas(name="eve-quality")
        .add_dataframe_asset(name="metrics")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update-data-docs")],
            result_format=_RESULT_FORMAT,
        )
    )
    outcome = checkpoint.run(
        batch_parameters={"dataframe": validation_frame(table, suite)}, run_id=RunIdentifier(run_name=run_name)
    )
    identifier, result = next(iter(outcome.run_results.items()))
    urls = context.get_docs_sites_urls(resource_identifier=identifier)
    return result.to_json_dict(), (urls[0]["site_url"] if urls else None)


def decide(
    table: pd.DataFrame,
    suite: gx.ExpectationSuite,
    max_filtered_fraction: float,
    data_docs_root: Path | None = None,
    run_name: str = "eve-quality",
) -> TableDecision:
    """Validate and decide: rows failing row rules are filtered, aggregate failures fail the version.

    ``data_docs_root``: keep GX's stores and Data Docs there (see the module docstring).
    """
    data_docs_page = None
    if data_docs_root is None:
        gx_result = run_suite(table, suite)
    else:
        gx_result, data_docs_page = run_suite_with_data_docs(table, suite, data_docs_root, run_name)
    row_count = len(table)
    filtered_reason = pd.Series(pd.NA, index=range(row_count), dtype="string")
    outcomes: list[RuleOutcome] = []
    reasons: list[str] = []
    # GX keeps suite order in its results; reason priority is that order.
    for expectation_result in gx_result["results"]:
        config = expectation_result["expectation_config"]
        meta = config.get("meta") or {}
        rule, scope = meta.get("rule", config["type"]), meta.get("scope", "aggregate")
        details = expectation_result.get("result") or {}
        if expectation_result.get("exception_info", {}).get("raised_exception"):
            message = expectation_result["exception_info"].get("exception_message")
            raise RuntimeError(f"GX could not evaluate rule {rule!r}: {message}")
        outcome = RuleOutcome(
            rule=rule,
            scope=scope,
            success=bool(expectation_result["success"]),
            description=meta.get("description", ""),
            observed_value=details.get("observed_value"),
            bound=meta.get("bound", ""),
        )
        if scope == "row":
            indices = np.asarray(details.get("unexpected_index_list") or [], dtype=np.int64)
            outcome.unexpected_count = int(indices.size)
            if indices.size:
                unset = filtered_reason.iloc[indices].isna().to_numpy()
                filtered_reason.iloc[indices[unset]] = rule
        elif not outcome.success:
            reasons.append(f"{rule}: {outcome.description} (observed {_fmt(outcome.observed_value)}; "
                           f"rule: {outcome.bound})")
        outcomes.append(outcome)

    filtered_count = int(filtered_reason.notna().sum())
    filtered_fraction = filtered_count / row_count if row_count else 0.0
    fraction_ok = filtered_fraction <= max_filtered_fraction
    outcomes.append(
        RuleOutcome(
            rule="filtered_fraction",
            scope="aggregate",
            success=fraction_ok,
            description=f"share of filtered samples at most {max_filtered_fraction}",
            unexpected_count=filtered_count,
            observed_value=filtered_fraction,
            bound=f"filtered share <= {max_filtered_fraction}",
        )
    )
    if not fraction_ok:
        reasons.append(
            f"filtered_fraction: {filtered_count}/{row_count} = {filtered_fraction:.3f} of samples "
            f"break row rules (max {max_filtered_fraction})"
        )
    return TableDecision(
        passed=not reasons,
        reasons=reasons,
        filtered_reason=filtered_reason,
        rules=outcomes,
        gx_result=gx_result,
        data_docs_page=data_docs_page,
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = [
    "RuleOutcome",
    "TableDecision",
    "decide",
    "run_suite",
    "run_suite_with_data_docs",
    "suite_columns",
    "validation_frame",
]
