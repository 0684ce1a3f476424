"""The model registry: a GTO git-tag registry with DVC-tracked weights (docs/architecture.md).

The registry is a git repository (``<EVE_HOME>/registry`` by default; a clone of ``EVE_REGISTRY_URL``
when a team remote is configured, with commits and tags pushed there). ``dvc.yaml`` declares the
``eve`` model artifact at ``models/eve``; the weights are ``dvc add``-ed and pushed to the same DVC
remote as the data, so ``gto show`` plus ``dvc get --rev eve@vX`` give back any version. Each version's
lineage manifest is committed next to it under ``lineage/eve/<version>.json``.

Two writes never interleave: every write holds an exclusive file lock on the registry (threads and
processes on this machine), and, because git tag times have one-second resolution and GTO orders
stage assignments by that time, a write never lands in the same second as the previous one.

    from tasks.registry import ModelRegistry
    registry = ModelRegistry.default()
    version = registry.register_candidate(model_dir, lineage, gate_decision)   # only if gate_decision.passed
    registry.show(); registry.history(); registry.pull_version(version, dest)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from pydantic import BaseModel, Field

from tasks import audit
from tasks.evaluate.gates import GateDecision
from tasks.lineage.schema import ApprovalRecord, LineageManifest, WeightsRef
from tasks.lineage.store import read_lineage, write_lineage
from eve_model.identity import weights_sha256
from tasks.platform import PlatformSettings

MODEL_NAME = "eve"
PRODUCTION_STAGE = "production"
WEIGHTS_PATH = "models/eve"
DVC_REMOTE_NAME = "storage"
PLATFORM_IDENTITY = ("eve-platform", "eve-platform@localhost")
LOCK_TIMEOUT_SECONDS = 600.0
_URL_CREDENTIALS = re.compile(r"://[^/@\s]+@")
"""user:token@ in a remote URL; scrubbed from error messages so secrets never reach logs."""


class RegistryError(RuntimeError):
    """A registry operation failed; the message says which command and why."""


class GateNotPassedError(RegistryError):
    """A candidate was offered for registration without a passing evaluation gate."""


class ApprovalRequiredError(RegistryError):
    """A stage assignment was attempted without an approval the platform recorded."""


class RegistryVersion(BaseModel):
    """One registered version as ``show()`` reports it."""

    version: str
    """Semantic version, e.g. ``v0.2.0``."""

    stages: list[str]
    """Stages the version currently holds."""

    created_at: str
    """Registration time (UTC, ISO 8601)."""

    commit: str
    """Registry commit the version tag points to."""


class RegistryEvent(BaseModel):
    """One registration or stage move, with the approval details from the tag message."""

    timestamp: str
    """Tag time (UTC, ISO 8601)."""

    event: str
    """``registration``, ``assignment``, ``unassignment`` or ``deregistration``."""

    version: str | None
    """Version concerned."""

    stage: str | None = None
    """Stage concerned (assignments)."""

    author: str | None = None
    """Tag author (the reviewer for production assignments)."""

    reviewer: str | None = None
    """Reviewer named in the approval record."""

    comment: str | None = None
    """Reviewer's comment."""

    decided_at: str | None = None
    """When the decision was accepted."""

    evidence_sha256: str | None = None
    """Hash of the evidence report the reviewer saw."""

    audit_record_hash: str | None = None
    """Audit record of the accepted decision."""

    details: dict[str, Any] = Field(default_factory=dict)
    """The whole tag message when it is JSON."""


class ModelRegistry:
    """The GTO registry at ``settings.registry_dir`` (a clone of ``settings.registry_url`` if set)."""

    _thread_lock = threading.RLock()

    def __init__(self, settings: PlatformSettings | None = None, audit_log: audit.AuditLog | None = None) -> None:
        self.settings = settings or PlatformSettings.load()
        self.repo_dir = self.settings.registry_dir
        self.audit_log = audit_log or audit.AuditLog.default(self.settings)
        self._lock_path = self.settings.path("locks") / "registry.lock"

    @classmethod
    def default(cls) -> "ModelRegistry":
        return cls(PlatformSettings.load())

    # ------------------------------------------------------------------ plumbing

    def _git(self, *args: str, check: bool = True) -> str:
        environment = {
            **os.environ,
            "GIT_AUTHOR_NAME": PLATFORM_IDENTITY[0],
            "GIT_AUTHOR_EMAIL": PLATFORM_IDENTITY[1],
            "GIT_COMMITTER_NAME": PLATFORM_IDENTITY[0],
            "GIT_COMMITTER_EMAIL": PLATFORM_IDENTITY[1],
        }
        result = subprocess.run(
            ["git", *args], cwd=self.repo_dir, env=environment, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            message = f"git {' '.join(args)} failed in {self.repo_dir}: {result.stderr.strip()}"
            raise RegistryError(_URL_CREDENTIALS.sub("://***@", message))
        return result.stdout.strip()

    @contextmanager
    def write_lock(self, timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
        """Exclusive lock around a registry write: one writer at a time across threads and processes."""
        with self._thread_lock, open(self._lock_path, "a") as lock_file:
            deadline = time.monotonic() + timeout_seconds
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"registry lock {self._lock_path} still held after {timeout_seconds} s"
                        ) from None
                    time.sleep(0.05)
            try:
                if self.settings.registry_url and (self.repo_dir / ".git").exists():
                    self._git("pull", "--ff-only", "--quiet", "origin", "main")
                    self._git("fetch", "--tags", "--quiet", "origin")
                yield
                self._wait_for_next_tag_second()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _wait_for_next_tag_second(self) -> None:
        # GTO orders assignments by tag time (whole seconds); the next writer must not share this second.
        now = time.time()
        time.sleep(max(0.0, int(now) + 1.02 - now))

    def _dvc_remote_url(self) -> str:
        return self.settings.dvc_remote_url or str(self.settings.local_dvc_remote)

    def ensure_initialized(self) -> None:
        """Create (or clone) the registry repository with the artifact declaration and the DVC remote."""
        with self.write_lock():
            self._ensure_initialized_locked()

    def _ensure_initialized_locked(self) -> None:
        if not (self.repo_dir / ".git").exists():
            if self.settings.registry_url:
                # The registry directory already exists (settings create it), so clone into it in place.
                self._git("clone", "--quiet", self.settings.registry_url, ".")
            else:
                self._git("init", "--quiet", "-b", "main")
        if (self.repo_dir / "dvc.yaml").exists():
            return
        self._git("checkout", "--quiet", "-B", "main")
        from dvc.repo import Repo as DvcRepo

        with contextlib.redirect_stdout(io.StringIO()):  # DVC prints a welcome text
            DvcRepo.init(str(self.repo_dir), no_scm=False, force=True).close()
        with DvcRepo(str(self.repo_dir)) as dvc_repo, dvc_repo.config.edit() as config:
            remote = {"url": self._dvc_remote_url()}
            if self.settings.s3_endpoint_url and remote["url"].startswith("s3://"):
                remote["endpointurl"] = self.settings.s3_endpoint_url
            config["remote"][DVC_REMOTE_NAME] = remote
            config["core"]["remote"] = DVC_REMOTE_NAME
            config["core"]["autostage"] = True
        artifacts = {
            "artifacts": {
                MODEL_NAME: {
                    "path": WEIGHTS_PATH,
                    "type": "model",
                    "desc": "EVE encoder-free vision-language model (HF safetensors directory)",
                }
            }
        }
        (self.repo_dir / "dvc.yaml").write_text(yaml.safe_dump(artifacts, sort_keys=False))
        (self.repo_dir / "lineage" / MODEL_NAME).mkdir(parents=True, exist_ok=True)
        (self.repo_dir / "lineage" / MODEL_NAME / ".gitkeep").touch()
        self._git("add", "-A")
        self._git("commit", "--quiet", "-m", "Initialise the EVE model registry")
        self._push()

    def _push(self, *tags: str) -> None:
        if not self.settings.registry_url:
            return
        self._git("push", "--quiet", "origin", "HEAD:main")
        for tag in tags:
            self._git("push", "--quiet", "origin", f"refs/tags/{tag}")

    def _gto(self):
        from gto import api

        return api

    def _versions_raw(self) -> list[dict[str, Any]]:
        from gto.exceptions import ArtifactNotFound

        if not (self.repo_dir / "dvc.yaml").exists():
            return []
        try:
            return self._gto().show(str(self.repo_dir), MODEL_NAME)
        except ArtifactNotFound:
            return []

    def _next_version(self) -> str:
        versions = [v["version"] for v in self._versions_raw()]
        if not versions:
            return "v0.1.0"
        major, minor, _ = max(tuple(int(part) for part in v.lstrip("v").split(".")[:3]) for v in versions)
        return f"v{major}.{minor + 1}.0"

    # ------------------------------------------------------------------ writes

    def register_candidate(self, model_dir: Path, lineage_manifest: LineageManifest, gate: GateDecision) -> str:
        """Register ``model_dir`` as the next version, with its lineage; only after the evaluation gate passed.

        Weights already registered (same directory hash) return their existing version.
        Copies the weights to ``models/eve``, DVC-adds and pushes them, commits the lineage manifest
        (with version and weight hashes filled in), tags ``eve@vX`` with GTO, pushes, and audits it.
        """
        if not gate.passed:
            raise GateNotPassedError(
                f"refusing to register {model_dir}: the evaluation gate did not pass "
                f"({'; '.join(check.reason for check in gate.failures) or 'no passing check'})"
            )
        model_dir = Path(model_dir)
        if not model_dir.is_dir() or not any(model_dir.iterdir()):
            raise RegistryError(f"{model_dir} is not a non-empty model directory")
        from dvc.repo import Repo as DvcRepo

        with self.write_lock():
            self._ensure_initialized_locked()
            # Re-running an unchanged retrain must not mint a second version of the same weights.
            candidate_sha256 = weights_sha256(model_dir)
            for existing in self._versions_raw():
                known = self.lineage(existing["version"]).weights
                if known is not None and known.sha256 == candidate_sha256:
                    return existing["version"]
            version = self._next_version()
            target = self.repo_dir / WEIGHTS_PATH
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(model_dir, target)
            with DvcRepo(str(self.repo_dir)) as dvc_repo:
                # DVC resolves relative targets against the process cwd, not the repository.
                dvc_repo.add(str(target))
                dvc_repo.push(targets=[str(target)])
            dvc_md5 = yaml.safe_load((self.repo_dir / f"{WEIGHTS_PATH}.dvc").read_text())["outs"][0]["md5"]
            manifest = lineage_manifest.model_copy(deep=True)
            manifest.version = version
            manifest.model_name = MODEL_NAME
            manifest.created_at = datetime.now(timezone.utc).isoformat()
            manifest.weights = WeightsRef(path=WEIGHTS_PATH, sha256=candidate_sha256, dvc_md5=dvc_md5)
            lineage_file = write_lineage(self.repo_dir, manifest)
            self._git("add", "-A", f"{WEIGHTS_PATH}.dvc", "models/.gitignore", str(lineage_file), ".dvc/config")
            self._git("commit", "--quiet", "-m", f"Register {MODEL_NAME} {version}")
            message = audit.canonical_json(
                {
                    "weights_sha256": manifest.weights.sha256,
                    "lineage_sha256": hashlib.sha256(lineage_file.read_bytes()).hexdigest(),
                    "evaluation": manifest.evaluation.model_dump(mode="json") if manifest.evaluation else None,
                }
            )
            self._gto().register(
                str(self.repo_dir),
                MODEL_NAME,
                ref="HEAD",
                version=version,
                message=message,
                author=PLATFORM_IDENTITY[0],
                author_email=PLATFORM_IDENTITY[1],
            )
            self._push(f"{MODEL_NAME}@{version}")
            self.audit_log.append(
                audit.CANDIDATE_REGISTERED,
                actor="platform",
                subject=f"{MODEL_NAME}@{version}",
                payload={"weights_sha256": manifest.weights.sha256, "dvc_md5": dvc_md5},
            )
        return version

    def assign_production(self, version: str, approval_record: ApprovalRecord) -> str:
        """Give ``version`` the production stage; only with an approval the platform accepted and audited.

        The approval must be an ``approve`` for this version whose hash is an accepted-decision record
        in the audit log (so only the approval path can move production). The tag message holds the
        reviewer, comment, time and evidence hash; the lineage manifest gets the approval appended.
        Returns the stage tag name.
        """
        self._check_approval(version, approval_record)
        with self.write_lock():
            self._ensure_initialized_locked()
            if version not in {v["version"] for v in self._versions_raw()}:
                raise RegistryError(f"{MODEL_NAME}@{version} is not registered")
            tags_before = set(self._git("tag", "--list", f"{MODEL_NAME}#{PRODUCTION_STAGE}*").split())
            self._gto().assign(
                str(self.repo_dir),
                MODEL_NAME,
                PRODUCTION_STAGE,
                version=version,
                message=audit.canonical_json(approval_record.model_dump()),
                author=approval_record.reviewer,
                author_email=PLATFORM_IDENTITY[1],
            )
            new_tags = set(self._git("tag", "--list", f"{MODEL_NAME}#{PRODUCTION_STAGE}*").split()) - tags_before
            stage_tag = next(iter(new_tags), f"{MODEL_NAME}#{PRODUCTION_STAGE}")
            manifest = read_lineage(self.repo_dir, f"{MODEL_NAME}@{version}")
            manifest.approvals.append(approval_record)
            lineage_file = write_lineage(self.repo_dir, manifest)
            self._git("add", str(lineage_file))
            self._git(
                "commit", "--quiet", "-m", f"Record approval of {MODEL_NAME} {version} by {approval_record.reviewer}"
            )
            self._push(stage_tag)
            self.audit_log.append(
                audit.PRODUCTION_ASSIGNED,
                actor=approval_record.reviewer,
                subject=f"{MODEL_NAME}@{version}",
                payload={
                    "stage_tag": stage_tag,
                    "approval_audit_record_hash": approval_record.audit_record_hash,
                    "evidence_sha256": approval_record.evidence_sha256,
                },
            )
        return stage_tag

    def _check_approval(self, version: str, approval: ApprovalRecord) -> None:
        if approval.decision != "approve" or approval.version != version:
            raise ApprovalRequiredError(f"{approval.decision} of {approval.version} does not approve {version}")
        record = self.audit_log.find(approval.audit_record_hash) if approval.audit_record_hash else None
        if record is None or record.event != audit.REVIEW_DECISION_ACCEPTED:
            raise ApprovalRequiredError(
                f"no accepted review decision {approval.audit_record_hash or '(none given)'} in the audit log: "
                "production moves only through the approval path"
            )
        recorded = ApprovalRecord.model_validate(record.payload.get("approval", {}))
        if recorded.model_dump(exclude={"audit_record_hash"}) != approval.model_dump(exclude={"audit_record_hash"}):
            raise ApprovalRequiredError("the approval differs from the decision recorded in the audit log")

    # ------------------------------------------------------------------ reads

    def show(self) -> list[RegistryVersion]:
        """Registered versions, newest first, with the stages they hold now."""
        return [
            RegistryVersion(
                version=v["version"],
                stages=sorted({s["stage"] for s in v["stages"]}),
                created_at=_iso(v["created_at"]),
                commit=v["commit_hexsha"],
            )
            for v in self._versions_raw()
        ]

    def production_version(self) -> str | None:
        """The version holding the production stage, or None."""
        holders = [v.version for v in self.show() if PRODUCTION_STAGE in v.stages]
        return holders[0] if holders else None

    def history(self) -> list[RegistryEvent]:
        """Every registration and stage move, oldest first, with who approved what."""
        if not (self.repo_dir / "dvc.yaml").exists():
            return []
        events = []
        for raw in self._gto().history(str(self.repo_dir), MODEL_NAME, ascending=True):
            try:
                details = json.loads(raw.get("message") or "")
            except ValueError:
                details = {}
            details = details if isinstance(details, dict) else {}
            events.append(
                RegistryEvent(
                    timestamp=_iso(raw["timestamp"]),
                    event=raw["event"],
                    version=raw.get("version"),
                    stage=raw.get("stage"),
                    author=raw.get("author"),
                    reviewer=details.get("reviewer"),
                    comment=details.get("comment"),
                    decided_at=details.get("decided_at"),
                    evidence_sha256=details.get("evidence_sha256"),
                    audit_record_hash=details.get("audit_record_hash"),
                    details=details,
                )
            )
        return events

    def verify_against_audit(self) -> list[str]:
        """Problems linking the registry's stage moves to the audit log (empty when every one is backed).

        Each production tag names the audit record of the decision behind it; a tag whose record is
        missing, or is not an accepted approval of that version, means the log or the tags were altered.
        """
        problems = []
        records = {r.record_hash: r for r in self.audit_log.records()} if self.audit_log.path.exists() else {}
        for event in self.history():
            if event.event != "assignment" or event.stage != PRODUCTION_STAGE:
                continue
            record = records.get(event.audit_record_hash or "")
            approval = (record.payload.get("approval") or {}) if record else {}
            if record is None:
                problems.append(
                    f"production assignment of {event.version} at {event.timestamp} names audit record "
                    f"{event.audit_record_hash}, which the log does not hold"
                )
            elif (
                record.event != audit.REVIEW_DECISION_ACCEPTED
                or approval.get("version") != event.version
                or approval.get("decision") != "approve"
            ):
                problems.append(
                    f"production assignment of {event.version} at {event.timestamp} points to audit "
                    f"record {record.seq} ({record.event}), not an approval of that version"
                )
        return problems

    def lineage(self, version: str) -> LineageManifest:
        return read_lineage(self.repo_dir, f"{MODEL_NAME}@{version.split('@')[-1]}")

    def pull_version(self, version: str, dest: Path) -> Path:
        """Fetch the weights of ``version`` from the DVC remote into ``dest`` and check their hash."""
        from dvc.repo import Repo as DvcRepo

        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise RegistryError(f"{dest} exists and is not empty")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest.rmdir()
        DvcRepo.get(str(self.repo_dir), WEIGHTS_PATH, out=str(dest), rev=f"{MODEL_NAME}@{version}")
        expected = self.lineage(version).weights
        actual = weights_sha256(dest)
        if expected is None or actual != expected.sha256:
            raise RegistryError(f"pulled weights of {version} hash to {actual}, lineage says {expected}")
        return dest


# ---------------------------------------------------------------------- Prefect tasks of the retrain


@task(name="register-candidate")
def register_candidate(model_dir: str, lineage_manifest: LineageManifest, gate: GateDecision) -> str:
    """Register a model that passed the evaluation gate (refused otherwise); returns its version."""
    return ModelRegistry.default().register_candidate(Path(model_dir), lineage_manifest, gate)


@task(name="checkout-production", retries=1, retry_delay_seconds=10)
def checkout_production() -> tuple[str | None, str | None]:
    """(version, local weights directory) of the model holding production, or (None, None).

    The weights are pulled once into ``<home>/registry-cache/<version>`` and verified against the
    version's recorded weights hash.
    """
    registry = ModelRegistry.default()
    version = registry.production_version()
    if version is None:
        return None, None
    target = registry.settings.path("registry-cache") / version
    if not (target / "config.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        registry.pull_version(version, target)
    return version, str(target)


def _iso(value: Any) -> str:
    return value.astimezone(timezone.utc).isoformat() if isinstance(value, datetime) else str(value)


__all__ = [
    "ApprovalRequiredError",
    "GateNotPassedError",
    "ModelRegistry",
    "RegistryError",
    "RegistryEvent",
    "RegistryVersion",
    "checkout_production",
    "register_candidate",
]
