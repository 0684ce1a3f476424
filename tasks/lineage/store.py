"""Where lineage manifests live: one JSON file per version in the registry repository
(``lineage/<model>/<version>.json``), written by the registry and read by ``eve lineage``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tasks.lineage.schema import LineageManifest

def lineage_path(registry_dir: Path, model_name: str, version: str) -> Path:
    return Path(registry_dir) / "lineage" / model_name / f"{version}.json"


def write_lineage(registry_dir: Path, manifest: LineageManifest) -> Path:
    """Write the manifest where the registry commits it; the caller commits."""
    if not manifest.version:
        raise ValueError("a lineage manifest is stored only once its registry version is known")
    target = lineage_path(registry_dir, manifest.model_name, manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return target


def read_lineage(registry_dir: Path, reference: str) -> LineageManifest:
    """Manifest of ``eve@v0.2.0`` (or ``v0.2.0`` for the default model)."""
    model_name, _, version = reference.rpartition("@")
    model_name = model_name or "eve"
    path = lineage_path(registry_dir, model_name, version)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise FileNotFoundError(f"no lineage for {model_name}@{version} in {registry_dir}; known versions: {known}")
    return LineageManifest.model_validate_json(path.read_text(encoding="utf-8"))


def iter_lineage(registry_dir: Path, model_name: str = "eve") -> list[LineageManifest]:
    folder = Path(registry_dir) / "lineage" / model_name
    return [LineageManifest.model_validate_json(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


class DatasetUsage(BaseModel):
    """A model version that used a dataset, and how."""

    model_ref: str
    """``eve@vX``."""

    roles: list[str]
    """Where the dataset appears: dataset roles and ``stage:<name>`` for training inputs."""


def find_models_using_dataset(registry_dir: Path, dataset_hash: str, model_name: str = "eve") -> list[DatasetUsage]:
    """Every registered version whose lineage contains ``dataset_hash`` (a unique prefix of 8+ characters works)."""
    if len(dataset_hash) < 8:
        raise ValueError("give at least 8 characters of the dataset hash")

    def matches(candidate: str | None) -> bool:
        return bool(candidate) and candidate.startswith(dataset_hash)

    usages = []
    for manifest in iter_lineage(registry_dir, model_name):
        roles = [d.role for d in manifest.all_datasets() if matches(d.dataset_hash)]
        roles += [f"stage:{s.name}" for s in manifest.stages if matches(s.input_dataset_hash)]
        if manifest.quality and matches(manifest.quality.dataset_hash):
            roles.append("quality-gate")
        if roles:
            usages.append(DatasetUsage(model_ref=manifest.ref, roles=roles))
    return usages


__all__ = ["DatasetUsage", "find_models_using_dataset", "iter_lineage", "lineage_path", "read_lineage", "write_lineage"]
