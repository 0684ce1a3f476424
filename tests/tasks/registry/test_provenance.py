"""Signed provenance (issue 20): every registered version carries an in-toto/SLSA statement in a DSSE
envelope signed by the platform key; ``eve audit verify`` names the version and the artifact when its
signature, a subject (a weights byte in the DVC cache) or a recorded config no longer matches."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main as eve
from tasks.lineage.store import lineage_path
from tasks.platform import PlatformSettings
from tasks.provenance import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    envelope_signed_by,
    pae,
    provenance_path,
    read_provenance,
    registered_weights_files,
)
from tasks.registry import WEIGHTS_PATH, ModelRegistry
from tasks.signing import KeyRing
from tests.fixtures.model_registry import authorised_approvals, passing_gate, verify_fails


@pytest.fixture
def registry(eve_home, registry_inputs) -> ModelRegistry:
    registry = ModelRegistry(PlatformSettings.load())
    registry.register_candidate(*registry_inputs(1), passing_gate())
    return registry


def test_registration_writes_a_signed_statement_naming_products_and_materials(registry, capsys):
    envelope = read_provenance(registry.repo_dir, "eve", "v0.1.0")
    statement = envelope.statement()
    assert (statement["_type"], statement["predicateType"], envelope.payloadType) == (
        STATEMENT_TYPE, PREDICATE_TYPE, PAYLOAD_TYPE
    )
    manifest = registry.lineage("v0.1.0")
    subjects = {s["name"]: s["digest"] for s in statement["subject"]}
    lineage_bytes = lineage_path(registry.repo_dir, "eve", "v0.1.0").read_bytes()
    assert subjects["lineage/eve/v0.1.0.json"] == {"sha256": hashlib.sha256(lineage_bytes).hexdigest()}
    weights = registry.repo_dir / WEIGHTS_PATH / "model.safetensors"
    assert subjects["models/eve/model.safetensors"] == {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert subjects["models/eve"] == {"eveWeightsSha256": manifest.weights.sha256}
    build = statement["predicate"]["buildDefinition"]
    digests = [m["digest"] for m in build["resolvedDependencies"]]
    assert all({"eveDatasetSha256": d.dataset_hash} in digests for d in manifest.all_datasets())
    assert {"eveWeightsSha256": manifest.caption.identity.weights_sha256} in digests
    assert {"gitCommit": manifest.code_revision} in [m["digest"] for m in build["resolvedDependencies"]]
    assert [s["config"] for s in build["externalParameters"]["stages"]] == [s.config for s in manifest.stages]
    # The provenance is committed with the version (the registration tag's commit holds it).
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "eve@v0.1.0"], cwd=registry.repo_dir,
                            check=True, capture_output=True, text=True).stdout.split()
    assert "lineage/eve/v0.1.0.intoto.jsonl" in listed
    # A promotion appends approvals to the manifest: the provenance still verifies.
    registry.assign_production("v0.1.0", authorised_approvals(registry, "v0.1.0"))
    assert eve(["audit", "verify"]) == 0, capsys.readouterr().out


def test_the_signature_is_standard_dsse_over_pae_with_the_platform_key(registry):
    envelope = read_provenance(registry.repo_dir, "eve", "v0.1.0")
    public = KeyRing.default().public_key("platform")
    public.verify(base64.b64decode(envelope.signatures[0].sig),
                  pae(PAYLOAD_TYPE, base64.b64decode(envelope.payload)))
    # A key that is not the platform's signs the same statement: not accepted.
    forged = envelope.model_copy(deep=True)
    forged.signatures[0].sig = base64.b64encode(
        Ed25519PrivateKey.generate().sign(pae(PAYLOAD_TYPE, base64.b64decode(envelope.payload)))
    ).decode()
    assert envelope_signed_by(forged, KeyRing.default()) is None


def test_an_edited_provenance_signature_fails_verify_naming_the_version(registry, capsys):
    path = provenance_path(registry.repo_dir, "eve", "v0.1.0")
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64  # claim other weights, keep the old signature
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope) + "\n")
    verify_fails(capsys, "provenance of eve@v0.1.0", "signature")


def test_a_weights_byte_changed_in_the_dvc_cache_fails_verify_naming_the_file(registry, capsys):
    commit = next(t.target for t in registry.tags() if t.name == "eve@v0.1.0")
    files, why_not = registered_weights_files(registry.repo_dir, commit, WEIGHTS_PATH)
    assert files is not None, why_not
    cached = files["model.safetensors"]
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    data[100] ^= 0x01
    cached.write_bytes(bytes(data))
    verify_fails(capsys, "provenance of eve@v0.1.0", "models/eve/model.safetensors")


def test_an_edited_recorded_config_fails_verify_naming_the_version(registry, capsys):
    path = lineage_path(registry.repo_dir, "eve", "v0.1.0")
    manifest = json.loads(path.read_text())
    manifest["stages"][0]["config"]["lr"] = 0.5
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    subprocess.run(["git", "commit", "-qam", "tweak"], cwd=registry.repo_dir, check=True,
                   env={"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x",
                        "GIT_COMMITTER_EMAIL": "x@x", "PATH": "/usr/bin:/bin"})
    verify_fails(capsys, "eve@v0.1.0", "stages")
