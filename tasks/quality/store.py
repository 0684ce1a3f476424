"""Quality results under the platform home, keyed by dataset hash + suite version + thresholds.

Layout::

    <home>/quality/index.jsonl                    append-only: one line per stored result
    <home>/quality/<dataset_hash>/<suite>/v<suite_version>-t<thresholds_fingerprint>/
        gate_result.json                          our GateResult (counts, reasons, deltas)
        gx_validation_result.json                 GX's own validation result, untouched
        summary.json                              dataset-level metric statistics
        filtered.jsonl                            every filtered sample: key, reason, text
        metrics.parquet                           the full per-sample metrics table
    <home>/quality/<dataset_hash>/gx/             GX's stores for this dataset version (suites, every
                                                  validation result) and its Data Docs site:
        uncommitted/data_docs/local_site/index.html   one page per validation of the version

A result directory is written under a temporary name and renamed into place, so a crash never
leaves a half-written result that a later run would read as the previous version.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.platform import PlatformSettings
from tasks.publish import private_path, publish_dir


def result_key(dataset_hash: str, suite_name: str, suite_version: str, thresholds_fingerprint: str) -> str:
    """Relative directory of one result (see the module docstring)."""
    return f"{dataset_hash}/{suite_name}/v{suite_version}-t{thresholds_fingerprint}"


class QualityStore:
    """Reads and writes gate results under ``<home>/quality``."""

    def __init__(self, settings: PlatformSettings | None = None) -> None:
        self.root = (settings or PlatformSettings.load()).path("quality")

    @property
    def index_path(self) -> Path:
        return self.root / "index.jsonl"

    def data_docs_root(self, dataset_hash: str) -> Path:
        """GX's store folder of one dataset version (its Data Docs site lives inside)."""
        return self.root / dataset_hash / "gx"

    def data_docs_index(self, dataset_hash: str) -> Path:
        """The Data Docs site's index page of one dataset version (exists once a gate ran on it)."""
        return self.data_docs_root(dataset_hash) / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def save(
        self,
        key: str,
        *,
        gate_result: dict[str, Any],
        gx_result: dict[str, Any],
        summary: dict[str, Any],
        filtered_records: list[dict[str, Any]],
        metrics_table: pd.DataFrame,
        index_entry: dict[str, Any],
    ) -> Path:
        """Write one result atomically (replacing an older result under the same key) and index it."""
        final = self.root / key
        staging = private_path(final)  # its own folder per call: two runs may store the same key at once
        staging.mkdir(parents=True)
        try:
            _write_json(staging / "gate_result.json", gate_result)
            _write_json(staging / "gx_validation_result.json", gx_result)
            _write_json(staging / "summary.json", summary)
            with open(staging / "filtered.jsonl", "w", encoding="utf-8") as handle:
                for record in filtered_records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            metrics_table.to_parquet(staging / "metrics.parquet", index=False)
            publish_dir(staging, final, is_published=lambda _: False, replace=True)  # a newer result replaces the old
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        entry = {**index_entry, "key": key, "stored_at_unix": time.time()}
        with open(self.index_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return final

    def entries(self) -> list[dict[str, Any]]:
        """Index entries, oldest first (entries whose directory is gone are skipped)."""
        if not self.index_path.exists():
            return []
        entries = []
        for line in self.index_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                if (self.root / entry["key"]).is_dir():
                    entries.append(entry)
        return entries

    def find_previous(
        self, suite_name: str, dataset_hash: str | None = None, exclude_dataset_hash: str | None = None
    ) -> dict[str, Any] | None:
        """The latest entry of ``suite_name``: for ``dataset_hash`` if given, else of any other dataset."""
        for entry in reversed(self.entries()):
            if entry["suite_name"] != suite_name:
                continue
            if dataset_hash is not None and entry["input_dataset_hash"] != dataset_hash:
                continue
            if exclude_dataset_hash is not None and entry["input_dataset_hash"] == exclude_dataset_hash:
                continue
            return entry
        return None

    def load(self, key: str, name: str = "gate_result.json") -> dict[str, Any]:
        return json.loads((self.root / key / name).read_text(encoding="utf-8"))


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), encoding="utf-8")


__all__ = ["QualityStore", "result_key"]
