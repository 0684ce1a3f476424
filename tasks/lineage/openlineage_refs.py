"""The platform's data and models as OpenLineage datasets (``tasks.lineage.openlineage.LineageDataset``).

Every step of a retrain names what it read and wrote with these, so one dataset has one name and one
content hash in every event that mentions it: a consumer (Marquez, DataHub) joins the chain
ingest -> register -> caption -> gate -> stage 1 -> ... -> registration -> promotion on them.

- an eve-wds/1 dataset directory (or ``s3://`` prefix): its location, its manifest's dataset hash and
  item count (the manifest is read, the shards are not);
- a registered dataset version: its location in the DVC remote, dataset hash, DVC md5 and tag;
- a model directory: its location and weights hash; a registered version: ``eve@vX``.
"""

from __future__ import annotations

from typing import Any

from tasks.lineage.openlineage import LineageDataset


def dataset_ref(location: str, role: str | None = None, dataset_hash: str | None = None,
                num_items: int | None = None) -> LineageDataset:
    """An eve-wds/1 dataset at ``location``; hash and size from its manifest unless given. Describing a step
    never fails it: an unreadable manifest leaves the hash ``unknown`` (the step itself says why)."""
    if dataset_hash is None or num_items is None:
        from eve_model.shards import read_manifest

        try:
            manifest = read_manifest(location)
            dataset_hash = dataset_hash or manifest.dataset_hash
            num_items = num_items if num_items is not None else manifest.num_items
        except Exception:  # noqa: BLE001 - lineage describes; the step reports its own errors
            dataset_hash = dataset_hash or "unknown"
    return LineageDataset(name=str(location), content_hash=dataset_hash, num_items=num_items,
                          extra={"role": role} if role else {})


def version_ref(version: Any, role: str | None = None) -> LineageDataset:
    """A registered dataset version (``tasks.data.versioning.DatasetVersion``) where the DVC remote keeps it."""
    return LineageDataset(
        name=str(version.remote_url), content_hash=version.dataset_hash, dvc_md5=version.dvc_md5,
        num_items=version.num_items, extra={"tag": version.tag, **({"role": role} if role else {})},
    )


def model_ref(location: str, weights_sha256: str, **extra: Any) -> LineageDataset:
    """A model: a directory, or ``eve@vX`` for a registered version."""
    return LineageDataset(name=str(location), content_hash=weights_sha256, kind="model",
                          extra={k: v for k, v in extra.items() if v is not None})


__all__ = ["dataset_ref", "model_ref", "version_ref"]
