"""The model registry: a GTO git-tag registry with DVC-tracked weights (docs/architecture.md).

The registry is a git repository (``<EVE_HOME>/registry`` by default; a clone of ``EVE_REGISTRY_URL``
when a team remote is configured, with commits and tags pushed there). ``dvc.yaml`` declares the
``eve`` model artifact at ``models/eve``; the weights are ``dvc add``-ed and pushed to the same DVC
remote as the data, so ``gto show`` plus ``dvc get --rev eve@vX`` give back any version. Each version's
lineage manifest is committed next to it under ``lineage/eve/<version>.json``.

Every tag the platform writes (GTO versions and stage moves, audit anchors) is an annotated tag
signed with the platform key in git's own SSH signature format (``tasks/signing.py``), so ``git tag
-v`` verifies it with the public key alone, and ``eve audit verify`` tells them from tags made by hand
with git or gto (``tasks/verification.py``).

Moving production is one recoverable step (:meth:`ModelRegistry.assign_production`): it re-checks the
approvals at the point of use (``tasks/approvals.py``), records its intent in the audit log, writes
the stage tag, commits the approvals into the lineage manifest, records the assignment, and anchors
the audit head in a signed tag (``eve-audit/anchor-<seq>``). A step interrupted anywhere (kill -9) is
completed, or rolled back when its tag was never written, by the next registry write. Promoting a
version that held production before is a rollback: the same path, a new stage tag (GTO's forced
re-assignment), recorded as ``kind: rollback``.

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
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from pydantic import BaseModel, Field

from eve_model.identity import weights_sha256
from tasks import audit
from tasks.approvals import assignment_problems
from tasks.data.versioning import RemoteConfig
from tasks.evaluate.gates import GateDecision
from tasks.lineage.schema import ApprovalRecord, LineageManifest, WeightsRef
from tasks.lineage.store import read_lineage, write_lineage
from tasks.platform import PlatformSettings
from tasks.provenance import provenance_for_registration
from tasks.registry_card import (
    MODEL_CARD_FILE,
    ModelCardFacts,
    card_dir,
    write_approval_card,
    write_registration_card,
)
from tasks.signing import KeyRing, canonical_json, split_signed_tag

MODEL_NAME = "eve"
PRODUCTION_STAGE = "production"
WEIGHTS_PATH = "models/eve"
DVC_REMOTE_NAME = "storage"
PLATFORM_IDENTITY = ("eve-platform", "eve-platform@localhost")
LOCK_TIMEOUT_SECONDS = 600.0
ANCHOR_TAG_PREFIX = "eve-audit/anchor-"
"""Signed tags that hold the audit head (``eve-audit/anchor-00000042``); GTO ignores these names."""
KILL_POINT_ENV = "EVE_KILL_AT"
"""Fault injection for the kill -9 drill (tests only): ``assign:<point>`` makes the assignment step
SIGKILL its own process at that point (``ASSIGNMENT_STEPS``)."""
ASSIGNMENT_STEPS = ("intent", "tag", "lineage", "recorded", "anchored")
"""The points of the assignment step, in order: after each, a crash leaves a state verify accepts."""
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

    kind: str | None = None
    """For production assignments: ``promotion`` or ``rollback`` (a version that held production before)."""

    tag: str | None = None
    """The git tag of the event."""

    details: dict[str, Any] = Field(default_factory=dict)
    """The whole tag message when it is JSON."""


class RegistryTag(BaseModel):
    """One tag of the registry repository as git stores it, with its signature checked."""

    name: str
    object: str
    """The tag object id (or the commit id of a lightweight tag)."""

    annotated: bool
    target: str
    """The commit it points to."""

    signed_by: str | None = None
    """Fingerprint of the trusted platform key that signed it; None when unsigned or not trusted."""

    message: str = ""
    """The tag message without its signature."""

    timestamp: int = 0
    """Tagger time (Unix seconds)."""


class ModelRegistry:
    """The GTO registry at ``settings.registry_dir`` (a clone of ``settings.registry_url`` if set)."""

    _thread_lock = threading.RLock()

    def __init__(self, settings: PlatformSettings | None = None, audit_log: audit.AuditLog | None = None) -> None:
        self.settings = settings or PlatformSettings.load()
        self.repo_dir = self.settings.registry_dir
        self.audit_log = audit_log or audit.AuditLog.default(self.settings)
        self.keyring: KeyRing = self.audit_log.keyring
        self._lock_path = self.settings.path("locks") / "registry.lock"

    @classmethod
    def default(cls) -> "ModelRegistry":
        return cls(PlatformSettings.load())

    # ------------------------------------------------------------------ plumbing

    def _git(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        environment = {
            **os.environ,
            "GIT_AUTHOR_NAME": PLATFORM_IDENTITY[0],
            "GIT_AUTHOR_EMAIL": PLATFORM_IDENTITY[1],
            "GIT_COMMITTER_NAME": PLATFORM_IDENTITY[0],
            "GIT_COMMITTER_EMAIL": PLATFORM_IDENTITY[1],
        }
        result = subprocess.run(
            ["git", *args], cwd=self.repo_dir, env=environment, capture_output=True, text=True, check=False,
            input=stdin,
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

    def _dvc_remote(self) -> RemoteConfig:
        """The DVC remote, credentials held apart from the URL (they never reach a committed file)."""
        return RemoteConfig.from_settings(self.settings)

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
            config["remote"][DVC_REMOTE_NAME] = self._dvc_remote().dvc_options()
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

    def _push(self, *tags: str | None) -> None:
        if not self.settings.registry_url:
            return
        self._git("push", "--quiet", "origin", "HEAD:main")
        for tag in filter(None, tags):
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

    # ------------------------------------------------------------------ signed tags

    def _create_signed_tag(self, name: str, target: str, message: str, tagger: str) -> str:
        """Write the annotated tag ``name`` on commit ``target``, signed with the platform key the way
        ``git tag -s`` with ``gpg.format=ssh`` signs; returns the tag object id. Never moves a tag."""
        tagger = re.sub(r"[<>\n]", "", tagger) or PLATFORM_IDENTITY[0]
        payload = (
            f"object {target}\ntype commit\ntag {name}\n"
            f"tagger {tagger} <{PLATFORM_IDENTITY[1]}> {int(time.time())} +0000\n\n{message.rstrip()}\n"
        )
        tag_object = self._git("mktag", stdin=payload + self.keyring.ssh_sign(payload.encode("utf-8")))
        self._git("update-ref", f"refs/tags/{name}", tag_object, "0" * 40)
        return tag_object

    def tags(self) -> list[RegistryTag]:
        """Every tag of the registry repository with its signature checked against the trusted platform keys."""
        if not (self.repo_dir / ".git").exists():
            return []
        listing = self._git(
            "for-each-ref", "--format=%(refname:strip=2)%00%(objectname)%00%(objecttype)%00%(*objectname)",
            "refs/tags",
        )
        tags = []
        for line in filter(None, listing.splitlines()):
            name, object_id, object_type, peeled = line.split("\0")
            if object_type != "tag":
                tags.append(RegistryTag(name=name, object=object_id, annotated=False, target=object_id))
                continue
            raw = self._git("cat-file", "tag", object_id)
            payload, armored = split_signed_tag(raw + "\n")
            header, _, message = payload.partition("\n\n")
            tagger = next((h for h in header.splitlines() if h.startswith("tagger ")), "")
            timestamp = int(tagger.split()[-2]) if len(tagger.split()) >= 2 else 0
            signed_by = self.keyring.ssh_verify(armored, payload.encode("utf-8")) if armored else None
            tags.append(
                RegistryTag(
                    name=name, object=object_id, annotated=True, target=peeled, signed_by=signed_by,
                    message=message.strip(), timestamp=timestamp,
                )
            )
        return tags

    def fetch_remote_tags(self) -> list[str]:
        """Fetch the registry remote's tags (when one is configured); returns git's lines for tags that
        differ locally (git refuses to clobber them), empty when they agree."""
        if not self.settings.registry_url or not (self.repo_dir / ".git").exists():
            return []
        result = subprocess.run(
            ["git", "fetch", "--tags", "origin"], cwd=self.repo_dir, capture_output=True, text=True, check=False
        )
        return [
            _URL_CREDENTIALS.sub("://***@", line.strip())
            for line in result.stderr.splitlines()
            if "rejected" in line or "clobber" in line
        ]

    def _tag_object(self, name: str) -> str | None:
        found = self._git("rev-parse", "--verify", "--quiet", f"refs/tags/{name}", check=False)
        return found or None

    def _stage_tag_name(self) -> str:
        from gto.constants import Action
        from gto.tag import name_tag
        from scmrepo.git import Git

        with Git(str(self.repo_dir)) as scm:
            return name_tag(Action.ASSIGN, MODEL_NAME, stage=PRODUCTION_STAGE, scm=scm)

    # ------------------------------------------------------------------ writes

    def register_candidate(
        self, model_dir: Path, lineage_manifest: LineageManifest, gate: GateDecision,
        card_facts: ModelCardFacts | None = None,
    ) -> str:
        """Register ``model_dir`` as the next version, with its lineage; only after the evaluation gate passed.

        Weights already registered (same directory hash) return their existing version.
        Copies the weights to ``models/eve`` and writes the version's model card into them
        (``tasks.registry_card``: training data, procedure, evaluation with ``card_facts``, approval
        pending; outside the weights hash), DVC-adds and pushes them, commits the lineage manifest
        (with version and weight hashes filled in) and the card's current copy
        (``cards/eve/<version>/README.md``), audits the registration, writes the signed version tag
        ``eve@vX``, anchors the audit head, and pushes.
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
            self._recover_locked()
            # Re-running an unchanged retrain must not mint a second version of the same weights.
            candidate_sha256 = weights_sha256(model_dir)
            for existing in self._versions_raw():
                known = self.lineage(existing["version"]).weights
                if known is not None and known.sha256 == candidate_sha256:
                    return existing["version"]
            version = self._next_version()
            manifest = lineage_manifest.model_copy(deep=True)
            manifest.version = version
            manifest.model_name = MODEL_NAME
            manifest.created_at = datetime.now(timezone.utc).isoformat()
            target = self.repo_dir / WEIGHTS_PATH
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(model_dir, target)
            write_registration_card(target, manifest, card_facts, candidate_sha256)
            with DvcRepo(str(self.repo_dir), config=self._dvc_remote().runtime_config(DVC_REMOTE_NAME)) as dvc_repo:
                # DVC resolves relative targets against the process cwd, not the repository.
                dvc_repo.add(str(target))
                dvc_repo.push(targets=[str(target)])
            dvc_md5 = yaml.safe_load((self.repo_dir / f"{WEIGHTS_PATH}.dvc").read_text())["outs"][0]["md5"]
            manifest.weights = WeightsRef(path=WEIGHTS_PATH, sha256=candidate_sha256, dvc_md5=dvc_md5)
            lineage_file = write_lineage(self.repo_dir, manifest)
            card_file = self._copy_card(target, version)
            provenance_file = provenance_for_registration(self.repo_dir, manifest, self.keyring, WEIGHTS_PATH,
                                                          model_card=card_file)
            self._git("add", "-A", f"{WEIGHTS_PATH}.dvc", "models/.gitignore", str(lineage_file), str(card_file),
                      str(provenance_file), ".dvc/config")
            self._git("commit", "--quiet", "-m", f"Register {MODEL_NAME} {version}")
            commit = self._git("rev-parse", "HEAD")
            tag = f"{MODEL_NAME}@{version}"
            message = audit.canonical_json(
                {
                    "weights_sha256": manifest.weights.sha256,
                    "lineage_sha256": hashlib.sha256(lineage_file.read_bytes()).hexdigest(),
                    "evaluation": manifest.evaluation.model_dump(mode="json") if manifest.evaluation else None,
                }
            )
            # The record comes first: a tag is never without the record that authorises it.
            self.audit_log.append(
                audit.CANDIDATE_REGISTERED,
                actor="platform",
                subject=tag,
                payload={"weights_sha256": manifest.weights.sha256, "dvc_md5": dvc_md5, "tag": tag, "commit": commit},
            )
            self._create_signed_tag(tag, commit, message, PLATFORM_IDENTITY[0])
            anchor = self._anchor_locked()
            self._push(tag, anchor)
        return version

    def assign_production(self, version: str, approvals: ApprovalRecord | list[ApprovalRecord]) -> str:
        """Give ``version`` the production stage, only with approvals the platform accepted; returns the stage tag.

        One recoverable step, each point recorded before the next: re-check the approvals at the
        point of use (``tasks.approvals.assignment_problems``: signed, bound to the request, not
        expired, not used before, enough of them) -> audit the intent -> signed stage tag -> approvals
        committed into the lineage manifest -> audit the assignment -> anchor the audit head -> push.
        Calling it again with the same approvals while their assignment holds production returns the
        same tag (a retry); after production moved on, it is refused (a replay).
        """
        approvals = [approvals] if isinstance(approvals, ApprovalRecord) else list(approvals)
        with self.write_lock():
            self._ensure_initialized_locked()
            self._recover_locked()
            records = self.audit_log.records()
            reused = self._assignment_of(approvals, records)
            if reused is not None:
                return reused
            decisions, request, problems = assignment_problems(version, approvals, records, self.keyring)
            if problems:
                raise ApprovalRequiredError(f"production not moved to {version}: {problems[0]}")
            versions = {v["version"]: v for v in self._versions_raw()}
            if version not in versions:
                raise RegistryError(f"{MODEL_NAME}@{version} is not registered")
            kind = "rollback" if self.held_production(version) else "promotion"
            reviewers = ", ".join(a.reviewer for a in approvals)
            intent = {
                "intent_id": uuid.uuid4().hex,
                "version": version,
                "kind": kind,
                "stage_tag": self._stage_tag_name(),
                "target_commit": versions[version]["commit_hexsha"],
                "request_id": request.request_id if request else None,
                "decision_ids": [d.decision_id for d in decisions],
                "decision_record_hashes": [a.audit_record_hash for a in approvals],
                "approvals": [a.model_dump(mode="json") for a in approvals],
            }
            self.audit_log.append(audit.ASSIGNMENT_INTENT, actor=reviewers, subject=f"{MODEL_NAME}@{version}",
                                  payload=intent)
            _kill_point("intent")
            self._complete_assignment_locked(intent, recovered=False)
            return intent["stage_tag"]

    def _complete_assignment_locked(self, intent: dict[str, Any], recovered: bool) -> None:
        """The steps after the intent record; each one skips what an interrupted earlier run already did."""
        approvals = [ApprovalRecord.model_validate(a) for a in intent["approvals"]]
        first = approvals[0]
        stage_tag = intent["stage_tag"]
        tag_object = self._tag_object(stage_tag)
        if tag_object is None:
            message = audit.canonical_json(
                {
                    **first.model_dump(mode="json"),
                    "reviewer": ", ".join(a.reviewer for a in approvals),
                    "approvals": intent["approvals"],
                    "kind": intent["kind"],
                    "intent_id": intent["intent_id"],
                }
            )
            tag_object = self._create_signed_tag(
                stage_tag, intent["target_commit"], message, ", ".join(a.reviewer for a in approvals)
            )
        _kill_point("tag")
        lineage_commit = self._record_approvals_in_lineage(intent["version"], approvals)
        _kill_point("lineage")
        self.audit_log.append(
            audit.PRODUCTION_ASSIGNED,
            actor=", ".join(a.reviewer for a in approvals),
            subject=f"{MODEL_NAME}@{intent['version']}",
            payload={
                "intent_id": intent["intent_id"],
                "kind": intent["kind"],
                "stage_tag": stage_tag,
                "tag_object": tag_object,
                "lineage_commit": lineage_commit,
                "request_id": intent["request_id"],
                "decision_ids": intent["decision_ids"],
                "approval_audit_record_hash": first.audit_record_hash,
                "decision_record_hashes": intent["decision_record_hashes"],
                "evidence_sha256": first.evidence_sha256,
                "recovered": recovered,
            },
        )
        _kill_point("recorded")
        anchor = self._anchor_locked()
        _kill_point("anchored")
        self._push(stage_tag, anchor)

    def _record_approvals_in_lineage(self, version: str, approvals: list[ApprovalRecord]) -> str:
        """Append the approvals the manifest does not hold yet and commit; returns the commit holding them."""
        manifest = read_lineage(self.repo_dir, f"{MODEL_NAME}@{version}")
        known = {a.audit_record_hash for a in manifest.approvals}
        missing = [a for a in approvals if a.audit_record_hash not in known]
        approved = [*manifest.approvals, *missing]
        lineage_file = write_lineage(self.repo_dir, manifest.model_copy(update={"approvals": approved}))
        changed = [str(lineage_file)]
        card = card_dir(self.repo_dir, MODEL_NAME, version)
        if (card / MODEL_CARD_FILE).exists():  # versions registered before the registry kept cards have none
            changed.append(str(write_approval_card(card, approved)))
        if self._git("status", "--porcelain", "--", *changed):
            self._git("add", *changed)
            reviewers = ", ".join(a.reviewer for a in approvals)
            self._git("commit", "--quiet", "-m", f"Record approval of {MODEL_NAME} {version} by {reviewers}")
        return self._git("rev-parse", "HEAD")

    def _assignment_of(self, approvals: list[ApprovalRecord], records: list[audit.AuditRecord]) -> str | None:
        """The stage tag of a completed assignment that used exactly these approvals, when it still holds
        production (a retry); a replay after production moved on is refused."""
        hashes = [a.audit_record_hash for a in approvals]
        done = next(
            (
                r for r in reversed(records)
                if r.event == audit.PRODUCTION_ASSIGNED and r.payload.get("decision_record_hashes") == hashes
            ),
            None,
        )
        if done is None:
            return None
        latest = [e for e in self.history() if e.event in ("assignment", "unassignment") and e.stage == PRODUCTION_STAGE]
        if latest and latest[-1].tag == done.payload.get("stage_tag"):
            return done.payload["stage_tag"]
        raise ApprovalRequiredError(
            f"these approvals were used for {done.payload.get('stage_tag')} and production has moved since: "
            "a decision moves production once (replay refused)"
        )

    def held_production(self, version: str) -> bool:
        """Whether ``version`` was ever given the production stage (promoting it again is a rollback)."""
        return any(
            e.event == "assignment" and e.stage == PRODUCTION_STAGE and e.version == version for e in self.history()
        )

    def recover(self) -> list[str]:
        """Complete or roll back assignment steps that were interrupted; returns what was done."""
        with self.write_lock():
            self._ensure_initialized_locked()
            return self._recover_locked()

    def _recover_locked(self) -> list[str]:
        records = self.audit_log.records()
        closed = {
            r.payload.get("intent_id")
            for r in records
            if r.event in (audit.PRODUCTION_ASSIGNED, audit.ASSIGNMENT_ABORTED)
        }
        done = []
        for record in records:
            if record.event != audit.ASSIGNMENT_INTENT or record.payload.get("intent_id") in closed:
                continue
            intent = record.payload
            tag = next((t for t in self.tags() if t.name == intent["stage_tag"]), None)
            if tag is None:
                self.audit_log.append(
                    audit.ASSIGNMENT_ABORTED,
                    actor="platform",
                    subject=record.subject,
                    payload={"intent_id": intent["intent_id"], "reason": "interrupted before its stage tag was written; "
                             "production did not move and the approvals stay unused"},
                )
                done.append(f"rolled back the interrupted assignment of {intent['version']} (no tag was written)")
            elif tag.signed_by and tag.target == intent["target_commit"]:
                self._complete_assignment_locked(intent, recovered=True)
                done.append(f"completed the interrupted assignment of {intent['version']} ({intent['stage_tag']})")
            else:
                self.audit_log.append(
                    audit.ASSIGNMENT_ABORTED,
                    actor="platform",
                    subject=record.subject,
                    payload={"intent_id": intent["intent_id"],
                             "reason": f"tag {intent['stage_tag']} exists but is not the one this step writes"},
                )
                done.append(f"abandoned the assignment of {intent['version']}: {intent['stage_tag']} is foreign")
        return done

    # ------------------------------------------------------------------ the audit anchor

    def anchor_audit_head(self) -> str | None:
        """Anchor the audit log's current head in a signed registry tag (and push it); returns its name."""
        with self.write_lock():
            self._ensure_initialized_locked()
            anchor = self._anchor_locked()
            self._push(*([anchor] if anchor else []))
            return anchor

    def _anchor_locked(self) -> str | None:
        records = self.audit_log.records()
        if not records:
            return None
        last = records[-1]
        name = f"{ANCHOR_TAG_PREFIX}{last.seq:08d}"
        if self._tag_object(name) is None:
            message = canonical_json(
                {"seq": last.seq, "record_hash": last.record_hash, "anchored_at": datetime.now(timezone.utc).isoformat()}
            )
            self._create_signed_tag(name, self._git("rev-parse", "HEAD"), message, PLATFORM_IDENTITY[0])
        return name

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
                    kind=details.get("kind"),
                    tag=raw.get("ref") or raw.get("tag"),
                    details=details,
                )
            )
        return events

    def model_card(self, version: str) -> str | None:
        """The current model card (markdown with its YAML header) of a registered version, or None."""
        path = card_dir(self.repo_dir, MODEL_NAME, version.split("@")[-1]) / MODEL_CARD_FILE
        return path.read_text(encoding="utf-8") if path.exists() else None

    def _copy_card(self, checkpoint: Path, version: str) -> Path:
        """The registry repository's copy of a checkpoint's card (the one approvals update); its path."""
        folder = card_dir(self.repo_dir, MODEL_NAME, version)
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(checkpoint / MODEL_CARD_FILE, folder / MODEL_CARD_FILE))

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
        DvcRepo.get(str(self.repo_dir), WEIGHTS_PATH, out=str(dest), rev=f"{MODEL_NAME}@{version}",
                    config=self._dvc_remote().runtime_config(DVC_REMOTE_NAME))
        expected = self.lineage(version).weights
        actual = weights_sha256(dest)
        if expected is None or actual != expected.sha256:
            raise RegistryError(f"pulled weights of {version} hash to {actual}, lineage says {expected}")
        current_card = self.model_card(version)
        if current_card is not None:  # the card as approvals left it (the checkpoint's is from registration)
            (dest / MODEL_CARD_FILE).write_text(current_card, encoding="utf-8")
        return dest


# ---------------------------------------------------------------------- Prefect tasks of the retrain


@task(name="register-candidate")
def register_candidate(
    model_dir: str, lineage_manifest: LineageManifest, gate: GateDecision, card_facts: ModelCardFacts | None = None
) -> str:
    """Register a model that passed the evaluation gate (refused otherwise) with its model card
    (``card_facts``: what the retrain knows beyond the lineage); returns its version. An OpenLineage run
    (``register-model``): the candidate's weights in, ``eve@<version>`` out."""
    from tasks.lineage.openlineage import lineage_run
    from tasks.lineage.openlineage_refs import model_ref

    weights = lineage_manifest.stages[-1].weights_sha256 if lineage_manifest.stages else weights_sha256(model_dir)
    with lineage_run("register-model", [model_ref(model_dir, weights, role="candidate")]) as written:
        version = ModelRegistry.default().register_candidate(Path(model_dir), lineage_manifest, gate, card_facts)
        written.append(model_ref(f"{MODEL_NAME}@{version}", weights))
    return version


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


def _kill_point(point: str) -> None:
    """The kill -9 drill's fault injection: SIGKILL this process at ``point`` when ``EVE_KILL_AT`` says so."""
    if os.environ.get(KILL_POINT_ENV) == f"assign:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def _iso(value: Any) -> str:
    return value.astimezone(timezone.utc).isoformat() if isinstance(value, datetime) else str(value)


__all__ = [
    "ANCHOR_TAG_PREFIX",
    "ASSIGNMENT_STEPS",
    "KILL_POINT_ENV",
    "ApprovalRequiredError",
    "GateNotPassedError",
    "ModelRegistry",
    "RegistryError",
    "RegistryEvent",
    "RegistryTag",
    "RegistryVersion",
    "checkout_production",
    "register_candidate",
]
