"""Signed provenance of every registered version: an in-toto Statement v1 with a SLSA Provenance v1
predicate, in a DSSE envelope signed with the platform key (docs/reproduce.md, "Provenance").

Written by the registry at registration, committed next to the lineage manifest as
``lineage/<model>/<version>.intoto.jsonl`` (one DSSE envelope per line, the SLSA convention), and
checked by ``eve audit verify`` (``provenance_problems``).

- **subject** (the products, by sha256 of their bytes): every file of the registered weights
  directory (``models/eve/<file>``), the lineage manifest as registered (``lineage/eve/<v>.json`` at
  the registration commit) and, when the version has one, its model card; plus ``models/eve`` with the
  platform's weights hash (``eveWeightsSha256``, ``eve_model.identity.weights_sha256``).
- **predicate.buildDefinition**: ``externalParameters`` are the recorded configs (stage configs and
  ds_configs, the caption backend identity, the caption and instruction gates); ``resolvedDependencies`` are the
  materials by hash: every dataset version (``eveDatasetSha256``: the eve-wds/1 dataset hash, over
  its shard list, not one file's bytes; ``dvcMd5`` for a raw source recorded by DVC), the teacher
  weights (``eveWeightsSha256``), and the platform commit (``gitCommit``). ``sha256`` is used only
  where it is the sha256 of one file's bytes, so a standard tool never compares it with a file.
- **predicate.runDetails**: the platform as builder, the version as invocation id, the stage
  weights as byproducts.

Decision: the statement is built by this module, not the ``in-toto`` package; the format is a few
JSON fields and DSSE is a one-line encoding (PAE) signed with the Ed25519 key the platform already
holds, so a dependency would add nothing an auditor needs. Anyone can verify it with ``openssl``
(docs/reproduce.md shows how). The lineage manifest gains approvals after registration (promotions
append them); the subject covers the manifest *as registered*, and verify checks that the current
manifest differs from it in approvals only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, Field

from eve_model.identity import file_sha256
from tasks.lineage.schema import LineageManifest
from tasks.lineage.store import lineage_path
from tasks.signing import KeyRing, canonical_json, key_fingerprint

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://github.com/eve-platform/eve/retrain/v1"
"""What the buildDefinition describes: the platform's retrain (data -> captions -> gates -> stages)."""
BUILDER_ID = "https://github.com/eve-platform/eve/platform"
WEIGHTS_DIGEST_ALGORITHM = "eveWeightsSha256"
"""Digest name of the weights hash over a directory (``eve_model.identity``), not one file's sha256."""
DATASET_DIGEST_ALGORITHM = "eveDatasetSha256"
"""Digest name of an eve-wds/1 dataset hash (sha256 over its canonical shard list, ``eve_model.shards``)."""
DVC_DIGEST_ALGORITHM = "dvcMd5"
"""Digest name of a raw source recorded by DVC's directory md5 (the demo's ``data.dvc``)."""
PROVENANCE_SUFFIX = ".intoto.jsonl"
_SIGNING_KEY = "platform"


class DsseSignature(BaseModel):
    keyid: str
    """Fingerprint of the platform key (``SHA256:...``, as ``ssh-keygen -l`` prints it)."""

    sig: str
    """Ed25519 signature over the PAE encoding, base64."""


class DsseEnvelope(BaseModel):
    """A DSSE v1 envelope (https://github.com/secure-systems-lab/dsse)."""

    payloadType: str = PAYLOAD_TYPE
    """Always the in-toto media type."""

    payload: str
    """The statement's JSON bytes, base64."""

    signatures: list[DsseSignature] = Field(default_factory=list)
    """One signature by the platform key."""

    def statement(self) -> dict[str, Any]:
        return json.loads(base64.b64decode(self.payload))


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def provenance_path(registry_dir: Path, model_name: str, version: str) -> Path:
    """``lineage/<model>/<version>.intoto.jsonl`` (not ``*.json``: the lineage reader globs those)."""
    return lineage_path(registry_dir, model_name, version).with_suffix(PROVENANCE_SUFFIX)


def registered_manifest_content(manifest: LineageManifest) -> dict[str, Any]:
    """The manifest as registration fixed it: everything but the approvals that promotions append."""
    return manifest.model_dump(mode="json", exclude={"approvals"})


# ---------------------------------------------------------------------- the statement


def materials(manifest: LineageManifest) -> list[dict[str, Any]]:
    """resolvedDependencies: every input of the version by hash (datasets, teacher weights, code)."""
    deps: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for dataset in manifest.all_datasets():
        name = f"dataset/{dataset.role}"
        if (name, dataset.dataset_hash) in seen:
            continue
        seen.add((name, dataset.dataset_hash))
        annotations = {"num_items": dataset.num_items, "derived_from": dataset.derived_from}
        if dataset.dvc_md5:
            annotations["dvc_md5"] = dataset.dvc_md5
        algorithm = DATASET_DIGEST_ALGORITHM if len(dataset.dataset_hash) == 64 else DVC_DIGEST_ALGORITHM
        deps.append({"name": name, "digest": {algorithm: dataset.dataset_hash}, "annotations": annotations})
    if manifest.caption is not None and manifest.caption.identity.weights_sha256:
        identity = manifest.caption.identity
        deps.append(
            {
                "name": f"teacher/{identity.backend}/{identity.model_id}",
                "digest": {WEIGHTS_DIGEST_ALGORITHM: identity.weights_sha256},
            }
        )
    dirty = "+dirty" in manifest.code_revision
    deps.append(
        {
            "name": "platform-code",
            "digest": {"gitCommit": manifest.code_revision.split("+")[0]},
            "annotations": {"code_revision": manifest.code_revision, "dirty": dirty},
        }
    )
    return deps


def external_parameters(manifest: LineageManifest) -> dict[str, Any]:
    """The recorded configs that determine the products."""
    return {
        "stages": [
            {
                "name": stage.name,
                "config": stage.config,
                "config_sha256": stage.config_sha256,
                "deepspeed_config": stage.deepspeed_config,
                "deepspeed_config_sha256": stage.deepspeed_config_sha256,
                "input_dataset_sha256": stage.input_dataset_hash,
                "parent_weights_sha256": stage.parent_weights_sha256,
            }
            for stage in manifest.stages
        ],
        "caption": manifest.caption.model_dump(mode="json") if manifest.caption else None,
        "quality": manifest.quality.model_dump(mode="json") if manifest.quality else None,
        # absent from statements signed before it was recorded: None on both sides then, so they still verify
        "instruction_quality": (manifest.instruction_quality.model_dump(mode="json")
                                if manifest.instruction_quality else None),
    }


def weights_subjects(weights_dir_name: str, files: dict[str, Path]) -> list[dict[str, Any]]:
    return [
        {"name": f"{weights_dir_name}/{relpath}", "digest": {"sha256": file_sha256(path)}}
        for relpath, path in sorted(files.items())
    ]


def build_statement(
    manifest: LineageManifest,
    *,
    weights_dir_name: str,
    weights_files: dict[str, Path],
    lineage_file: Path,
    lineage_name: str,
    model_card: Path | None = None,
    model_card_name: str | None = None,
) -> dict[str, Any]:
    """The in-toto Statement v1 of a registered version (``manifest.version`` and ``weights`` set)."""
    if manifest.version is None or manifest.weights is None:
        raise ValueError("provenance is written at registration, once version and weights are known")
    subject = weights_subjects(weights_dir_name, weights_files)
    subject.append({"name": weights_dir_name, "digest": {WEIGHTS_DIGEST_ALGORITHM: manifest.weights.sha256}})
    subject.append({"name": lineage_name, "digest": {"sha256": file_sha256(lineage_file)}})
    if model_card is not None:
        subject.append({"name": model_card_name or model_card.name, "digest": {"sha256": file_sha256(model_card)}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external_parameters(manifest),
                "internalParameters": {"schedulers": sorted({s.scheduler for s in manifest.stages})},
                "resolvedDependencies": materials(manifest),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID},
                "metadata": {"invocationId": manifest.ref, "finishedOn": manifest.created_at},
                "byproducts": [
                    {"name": f"stage/{s.name}", "digest": {WEIGHTS_DIGEST_ALGORITHM: s.weights_sha256}}
                    for s in manifest.stages
                ],
            },
        },
    }


# ---------------------------------------------------------------------- signing and checking


def sign_statement(statement: dict[str, Any], keyring: KeyRing) -> DsseEnvelope:
    """Wrap ``statement`` in a DSSE envelope signed by the platform key."""
    payload = canonical_json(statement).encode("utf-8")
    key = keyring.private_key(_SIGNING_KEY)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return DsseEnvelope(
        payload=base64.b64encode(payload).decode(),
        signatures=[DsseSignature(keyid=key_fingerprint(key.public_key()), sig=base64.b64encode(signature).decode())],
    )


def envelope_signed_by(envelope: DsseEnvelope, keyring: KeyRing) -> str | None:
    """The fingerprint of the trusted platform key that signed ``envelope``, or None."""
    if envelope.payloadType != PAYLOAD_TYPE:
        return None
    try:
        message = pae(envelope.payloadType, base64.b64decode(envelope.payload, validate=True))
    except ValueError:
        return None
    trusted = keyring.trusted_keys(_SIGNING_KEY)
    for signature in envelope.signatures:
        public = trusted.get(signature.keyid)
        if public is None:
            continue
        try:
            public.verify(base64.b64decode(signature.sig), message)
            return signature.keyid
        except (InvalidSignature, ValueError):
            continue
    return None


def write_provenance(registry_dir: Path, manifest: LineageManifest, envelope: DsseEnvelope) -> Path:
    """Store the envelope next to the manifest; the caller commits it."""
    target = provenance_path(registry_dir, manifest.model_name, manifest.version or "")
    target.write_text(envelope.model_dump_json() + "\n", encoding="utf-8")
    return target


def read_provenance(registry_dir: Path, model_name: str, version: str) -> DsseEnvelope:
    path = provenance_path(registry_dir, model_name, version)
    return DsseEnvelope.model_validate_json(path.read_text(encoding="utf-8").splitlines()[0])


def files_under(directory: Path) -> dict[str, Path]:
    """relpath -> path of every file under ``directory``."""
    return {path.relative_to(directory).as_posix(): path for path in sorted(directory.rglob("*")) if path.is_file()}


def provenance_for_registration(
    registry_dir: Path,
    manifest: LineageManifest,
    keyring: KeyRing,
    weights_dir_name: str,
    model_card: Path | None = None,
) -> Path:
    """Build, sign and store the provenance of a version being registered (its lineage file already
    written and its weights in ``registry_dir/weights_dir_name``); returns the file to commit."""
    lineage_file = lineage_path(registry_dir, manifest.model_name, manifest.version or "")
    statement = build_statement(
        manifest,
        weights_dir_name=weights_dir_name,
        weights_files=files_under(Path(registry_dir) / weights_dir_name),
        lineage_file=lineage_file,
        lineage_name=lineage_file.relative_to(registry_dir).as_posix(),
        model_card=model_card,
        model_card_name=model_card.relative_to(registry_dir).as_posix() if model_card else None,
    )
    return write_provenance(registry_dir, manifest, sign_statement(statement, keyring))


# ---------------------------------------------------------------------- verification


def _git_show(registry_dir: Path, commit: str, relpath: str) -> bytes | None:
    result = subprocess.run(
        ["git", "show", f"{commit}:{relpath}"], cwd=registry_dir, capture_output=True, check=False
    )
    return result.stdout if result.returncode == 0 else None


def _dvc_cache_file(registry_dir: Path, md5: str) -> Path:
    return Path(registry_dir) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def registered_weights_files(
    registry_dir: Path, commit: str, weights_dir_name: str
) -> tuple[dict[str, Path] | None, str | None]:
    """(relpath -> file in the local DVC cache, None) of the weights registered at ``commit``, or
    (None, why not) when the local cache does not hold them (a clone that never pulled)."""
    import yaml

    dvc_file = _git_show(registry_dir, commit, f"{weights_dir_name}.dvc")
    if dvc_file is None:
        return None, f"{weights_dir_name}.dvc is not in registration commit {commit[:12]}"
    dir_md5 = yaml.safe_load(dvc_file)["outs"][0]["md5"]
    listing = _dvc_cache_file(registry_dir, dir_md5)
    if not listing.exists():
        return None, f"the local DVC cache lacks {dir_md5} (run `dvc pull` in the registry to check the weights)"
    files = {}
    for entry in json.loads(listing.read_text()):
        files[entry["relpath"]] = _dvc_cache_file(registry_dir, entry["md5"])
    missing = sorted(rel for rel, path in files.items() if not path.exists())
    if missing:
        return None, f"the local DVC cache lacks {', '.join(missing)} (run `dvc pull` in the registry)"
    return files, None


def provenance_problems(
    registry_dir: Path, manifest: LineageManifest, registration_commit: str | None, keyring: KeyRing,
    weights_dir_name: str,
) -> tuple[list[str], list[str]]:
    """(problems, notes) of one version's provenance: signature, every subject against the registered
    files, and every material and parameter against the lineage manifest."""
    ref = manifest.ref
    path = provenance_path(registry_dir, manifest.model_name, manifest.version or "")
    if not path.exists():
        return [f"provenance of {ref}: {path.name} is missing (every registered version has a signed provenance)"], []
    try:
        envelope = read_provenance(registry_dir, manifest.model_name, manifest.version or "")
        statement = envelope.statement()
    except (ValueError, IndexError) as error:
        return [f"provenance of {ref}: {path.name} is not a DSSE envelope ({error})"], []
    if envelope_signed_by(envelope, keyring) is None:
        return [f"provenance of {ref}: the DSSE signature of {path.name} is not the platform key's (forged or edited)"], []
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        return [f"provenance of {ref}: not an in-toto v1 SLSA provenance statement"], []
    problems: list[str] = []
    notes: list[str] = []
    if registration_commit is None:
        return [f"provenance of {ref}: no registration tag {ref} to check the products against"], []
    actual: dict[str, dict[str, str]] = {}
    lineage_rel = lineage_path(Path("."), manifest.model_name, manifest.version or "").as_posix()
    registered_lineage = _git_show(registry_dir, registration_commit, lineage_rel)
    if registered_lineage is not None:
        actual[lineage_rel] = {"sha256": hashlib.sha256(registered_lineage).hexdigest()}
        registered = LineageManifest.model_validate_json(registered_lineage)
        if registered_manifest_content(registered) != registered_manifest_content(manifest):
            changed = sorted(
                key for key, value in registered_manifest_content(manifest).items()
                if registered_manifest_content(registered).get(key) != value
            )
            problems.append(
                f"lineage of {ref}: the manifest differs from the one registered (and signed) in {', '.join(changed)}"
            )
    files, why_not = registered_weights_files(registry_dir, registration_commit, weights_dir_name)
    if files is None:
        notes.append(f"provenance of {ref}: weights files not checked: {why_not}")
    else:
        for subject in weights_subjects(weights_dir_name, files):
            actual[subject["name"]] = subject["digest"]
    if manifest.weights is not None:
        actual[weights_dir_name] = {WEIGHTS_DIGEST_ALGORITHM: manifest.weights.sha256}
    recorded = {s["name"]: s["digest"] for s in statement.get("subject", [])}
    for name, digest in recorded.items():
        if name not in actual:
            if name.startswith(f"{weights_dir_name}/") and files is None:
                continue
            card = _git_show(registry_dir, registration_commit, name)
            if card is None:
                problems.append(f"provenance of {ref}: subject {name} is not in the registered version")
                continue
            actual[name] = {"sha256": hashlib.sha256(card).hexdigest()}
        if actual[name] != digest:
            problems.append(
                f"provenance of {ref}: subject {name} digest {_short(digest)} does not match the registered "
                f"file ({_short(actual[name])})"
            )
    for name in sorted(set(actual) - set(recorded)):
        problems.append(f"provenance of {ref}: registered artifact {name} is not a subject of the provenance")
    build = statement.get("predicate", {}).get("buildDefinition", {})
    recorded_materials = {m["name"]: m["digest"] for m in build.get("resolvedDependencies", [])}
    for material in materials(manifest):
        if recorded_materials.get(material["name"]) != material["digest"]:
            problems.append(
                f"provenance of {ref}: material {material['name']} is {_short(material['digest'])} in the lineage, "
                f"{_short(recorded_materials.get(material['name']))} in the signed provenance"
            )
    parameters = external_parameters(manifest)
    for key, value in parameters.items():
        recorded_value = build.get("externalParameters", {}).get(key)
        if canonical_json(recorded_value) != canonical_json(value):
            problems.append(f"provenance of {ref}: recorded {key} config differs from the signed provenance")
    return problems, notes


def _short(digest: dict[str, str] | None) -> str:
    if not digest:
        return "absent"
    return ", ".join(f"{algorithm}:{value[:16]}" for algorithm, value in sorted(digest.items()))


__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "DsseEnvelope",
    "build_statement",
    "envelope_signed_by",
    "pae",
    "provenance_for_registration",
    "provenance_path",
    "provenance_problems",
    "read_provenance",
    "registered_weights_files",
]
