"""Quality reports: metric deltas against the previous dataset version, rendered as markdown.

The same markdown goes into the Prefect artifact, the promotion evidence report and the output of
``eve quality check``, so it is self-contained: verdict, reasons, counts that reconcile, the rules
in force (profile, every threshold, which ones were overridden), filtered counts per rule, the
per-metric deltas (current, previous, absolute and relative change) and where GX's Data Docs for
the dataset version are.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class MetricDelta(BaseModel):
    """One metric of the current version beside the previous version's value."""

    metric: str
    """Name of the dataset-level statistic (``summarize_caption_metrics`` keys)."""
    current: float
    """Value for the version just gated."""
    previous: float | None = None
    """Value for the previous version; None when it did not have this metric."""
    absolute_change: float | None = None
    """current - previous."""
    relative_change: float | None = None
    """(current - previous) / |previous|; None when previous is 0 or missing."""


def metric_deltas(current: dict[str, Any], previous: dict[str, Any] | None) -> list[MetricDelta]:
    """Deltas for every numeric metric of ``current`` (previous None: values without deltas)."""
    deltas = []
    for metric, value in current.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        before = (previous or {}).get(metric)
        if isinstance(before, (int, float)) and not isinstance(before, bool):
            change = float(value) - float(before)
            relative = change / abs(before) if before else None
            deltas.append(MetricDelta(metric=metric, current=float(value), previous=float(before),
                                      absolute_change=change, relative_change=relative))
        else:
            deltas.append(MetricDelta(metric=metric, current=float(value)))
    return deltas


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text


def render_rules_in_force(result: Any) -> list[str]:
    """Markdown lines: the profile and every threshold, overrides marked with the profile default."""
    profile = getattr(result, "profile", None)
    overrides = getattr(result, "threshold_overrides", {}) or {}
    lines = ["## Rules in force", ""]
    if profile:
        changed = f"; {len(overrides)} overridden" if overrides else "; no overrides"
        lines += [f"Profile `{profile}`{changed}.", ""]
    lines += ["| threshold | value | profile default |", "|---|---|---|"]
    for name, value in result.thresholds.items():
        default = f"{overrides[name][1]} (overridden)" if name in overrides else ("same" if profile else "-")
        lines.append(f"| {name} | {value} | {default} |")
    return lines + [""]


def render_markdown(result: Any) -> str:
    """Markdown report of a ``GateResult`` (duck-typed so this module imports nothing heavy)."""
    verdict = "PASSED" if result.passed else "FAILED"
    counts = result.counts
    profile = getattr(result, "profile", None)
    lines = [
        f"# Quality gate {verdict}: {result.suite_name} v{result.suite_version}"
        + (f" (profile {profile})" if profile else ""),
        "",
        f"- input dataset: `{result.input_dataset_hash}`",
        f"- output dataset: `{result.output_dataset_hash or 'not written'}`",
        f"- thresholds: `{result.thresholds_fingerprint}`; previous version: "
        f"`{result.previous_dataset_hash or 'none'}`",
        f"- samples: {counts.num_input} in = {counts.num_kept} kept + {counts.num_filtered} filtered",
    ]
    if getattr(result, "data_docs_index", None):
        lines.append(f"- GX Data Docs of this dataset version: [{result.data_docs_index}]({result.data_docs_index})"
                     + (f"; this validation: [{result.data_docs_page}]({result.data_docs_page})"
                        if getattr(result, "data_docs_page", None) else ""))
    if getattr(result, "result_dir", ""):
        lines.append(f"- stored result: `{result.result_dir}` (filtered.jsonl lists every filtered sample)")
    lines.append("")
    if result.reasons:
        lines += ["## Why it failed", ""] + [f"- {reason}" for reason in result.reasons] + [""]
    lines += ["## Filtered samples by reason", "", "| rule | filtered |", "|---|---|"]
    for rule, count in sorted(counts.filtered_by_reason.items(), key=lambda item: -item[1]):
        lines.append(f"| {rule} | {count} |")
    lines += ["", "## Rules", "", "| rule | scope | in force | ok | rows breaking it | observed |",
              "|---|---|---|---|---|---|"]
    for rule in result.rules:
        observed = rule.get("observed_value")
        observed_text = _num(observed) if isinstance(observed, float) else ("-" if observed is None else str(observed))
        lines.append(
            f"| {rule['rule']} | {rule['scope']} | {rule.get('bound') or '-'} | {'yes' if rule['success'] else 'NO'} | "
            f"{rule['unexpected_count'] if rule['scope'] == 'row' else '-'} | {observed_text} |"
        )
    lines += [""] + render_rules_in_force(result)
    lines += ["## Metrics vs previous version", "", "| metric | current | previous | change | relative |",
              "|---|---|---|---|---|"]
    for delta in result.deltas:
        relative = "-" if delta.relative_change is None else f"{delta.relative_change:+.1%}"
        lines.append(
            f"| {delta.metric} | {_num(delta.current)} | {_num(delta.previous)} | "
            f"{_num(delta.absolute_change, signed=True)} | {relative} |"
        )
    return "\n".join(lines) + "\n"


def delta_table_rows(result: Any) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact: one per metric."""
    return [delta.model_dump() for delta in result.deltas]


__all__ = ["MetricDelta", "delta_table_rows", "metric_deltas", "render_markdown", "render_rules_in_force"]
