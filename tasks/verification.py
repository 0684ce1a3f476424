"""``eve audit verify``: the audit log, the registry's tags and the lineage manifests checked against
each other (docs/security.md, "What each check proves").

In order, so that the first problem is the first broken link:

1. the audit log itself: every record hashes, links, is signed by the platform key; the signed head
   matches; no torn line (``tasks/audit.py``);
2. the anchors: every ``eve-audit/anchor-<seq>`` tag of the registry is signed by the platform and
   names a record the log still holds with the same hash (a rewritten or cut log, or an old signed
   head put back, no longer matches what the registry holds);
3. every accepted decision of the log is one the platform accepted: platform and gateway signatures,
   bound to its recorded request, allowed by the recorded policy (``tasks/approvals.py``);
4. every GTO tag (registration, production, unassignment, deregistration, deprecation) is signed by
   the platform and backed by the audit record that authorised it: a registration record, or an
   assignment step whose approvals held at the time of use;
5. every assignment record names a tag that exists as recorded; a decision is used once;
6. every approval in a lineage manifest is an accepted decision of the log, and every completed
   assignment's approvals are in its version's manifest;
7. every registered version's signed provenance (``tasks/provenance.py``): the DSSE signature is the
   platform key's, every subject (weights files, lineage manifest as registered, model card) hashes
   as the registered file, every material and recorded config is the lineage manifest's.

An assignment step interrupted between its points (kill -9) is a note, not a problem: its intent is
recorded and the next registry write completes or rolls it back.
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, Field

from tasks import audit
from tasks.approvals import assignment_problems, decision_problems
from tasks.lineage.schema import ApprovalRecord
from tasks.lineage.store import iter_lineage
from tasks.platform import PlatformSettings
from tasks.provenance import provenance_problems
from tasks.registry import ANCHOR_TAG_PREFIX, MODEL_NAME, PRODUCTION_STAGE, WEIGHTS_PATH, ModelRegistry, RegistryTag


class PlatformVerification(BaseModel):
    """What ``eve audit verify`` found."""

    problems: list[str] = Field(default_factory=list)
    """Broken links, the first one first; empty when everything holds."""

    notes: list[str] = Field(default_factory=list)
    """Observations that are not defects (interrupted steps, raised alerts)."""

    num_records: int = 0
    num_tags: int = 0
    num_anchors: int = 0
    head_hash: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_platform(settings: PlatformSettings | None = None) -> PlatformVerification:
    """Run every check of the module docstring on the platform home of ``settings``."""
    settings = settings or PlatformSettings.load()
    registry = ModelRegistry(settings)
    log_result = registry.audit_log.verify()
    report = PlatformVerification(
        problems=list(log_result.problems),
        notes=list(log_result.notes),
        num_records=log_result.num_records,
        head_hash=log_result.head_hash,
    )
    records = registry.audit_log.records()
    report.problems += registry_remote_problems(registry)
    tags = registry.tags()
    report.num_tags = len(tags)
    report.num_anchors = sum(tag.name.startswith(ANCHOR_TAG_PREFIX) for tag in tags)
    report.problems += anchor_problems(tags, records)
    report.problems += accepted_decision_problems(records, registry)
    tag_issues, tag_notes = tag_problems(tags, records, registry)
    report.problems += tag_issues
    report.notes += tag_notes
    report.problems += record_problems(tags, records)
    report.problems += lineage_problems(registry, records)
    provenance_issues, provenance_notes = all_provenance_problems(registry, tags)
    report.problems += provenance_issues
    report.notes += provenance_notes
    return report


def all_provenance_problems(registry: ModelRegistry, tags: list[RegistryTag]) -> tuple[list[str], list[str]]:
    """7. every registered version's signed provenance against its registered files and lineage."""
    problems, notes = [], []
    targets = {tag.name: tag.target for tag in tags if tag.signed_by}
    for manifest in iter_lineage(registry.repo_dir, MODEL_NAME):
        found, seen = provenance_problems(
            registry.repo_dir, manifest, targets.get(manifest.ref), registry.keyring, WEIGHTS_PATH
        )
        problems += found
        notes += seen
    return problems, notes


def registry_remote_problems(registry: ModelRegistry) -> list[str]:
    """With a registry remote, its tags are fetched: a local tag that differs from the remote's is reported."""
    return [
        f"registry tag differs from the remote {registry.settings.registry_url}: {line}"
        for line in registry.fetch_remote_tags()
    ]


def anchor_problems(tags: list[RegistryTag], records: list[audit.AuditRecord]) -> list[str]:
    problems = []
    by_seq = {record.seq: record for record in records}
    for tag in sorted((t for t in tags if t.name.startswith(ANCHOR_TAG_PREFIX)), key=lambda t: t.name):
        if not tag.signed_by:
            problems.append(f"anchor tag {tag.name} is not signed by the platform key (made by hand)")
            continue
        try:
            anchored = json.loads(tag.message)
            seq, record_hash = int(anchored["seq"]), anchored["record_hash"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"anchor tag {tag.name} holds no audit head")
            continue
        record = by_seq.get(seq)
        if record is None:
            problems.append(f"anchor tag {tag.name}: the registry anchored record seq {seq}, the log no longer has it (cut)")
        elif record.record_hash != record_hash:
            problems.append(
                f"anchor tag {tag.name}: record seq {seq} is {record.record_hash[:16]} in the log, "
                f"{record_hash[:16]} when anchored (the log was rewritten)"
            )
    return problems


def accepted_decision_problems(records: list[audit.AuditRecord], registry: ModelRegistry) -> list[str]:
    problems = []
    for record in records:
        if record.event == audit.REVIEW_DECISION_ACCEPTED:
            _, _, issues = decision_problems(record, records, registry.keyring)
            problems += [
                f"audit record seq {record.seq} ({record.event} by {record.actor}) is not a decision the platform "
                f"accepted: {issue}"
                for issue in issues[:1]
            ]
    return problems


def _intents(records: list[audit.AuditRecord]) -> dict[str, audit.AuditRecord]:
    return {r.payload["intent_id"]: r for r in records if r.event == audit.ASSIGNMENT_INTENT and "intent_id" in r.payload}


def tag_problems(
    tags: list[RegistryTag], records: list[audit.AuditRecord], registry: ModelRegistry
) -> tuple[list[str], list[str]]:
    """Every GTO tag signed and authorised by its audit record; (problems, notes)."""
    from gto.constants import Action
    from gto.tag import parse_name

    problems, notes = [], []
    intents = _intents(records)
    completed = {r.payload.get("intent_id"): r for r in records if r.event == audit.PRODUCTION_ASSIGNED}
    aborted = {r.payload.get("intent_id") for r in records if r.event == audit.ASSIGNMENT_ABORTED}
    registrations = {
        (r.payload.get("tag"), r.payload.get("commit")) for r in records if r.event == audit.CANDIDATE_REGISTERED
    }
    for tag in sorted(tags, key=lambda t: (t.timestamp, t.name)):
        parsed = parse_name(tag.name, raise_on_fail=False)
        if not parsed:
            continue
        action = parsed.get("action")
        if not tag.annotated or not tag.signed_by:
            problems.append(f"registry tag {tag.name} is not signed by the platform key (made with git or gto by hand)")
            continue
        if action == Action.REGISTER:
            if (tag.name, tag.target) not in registrations:
                problems.append(f"registry tag {tag.name} has no registration record in the audit log")
            continue
        if action != Action.ASSIGN or parsed.get("stage") != PRODUCTION_STAGE or parsed.get("name") != MODEL_NAME:
            # The platform never unassigns, deregisters or deprecates: a signed one is still unauthorised.
            problems.append(f"registry tag {tag.name} ({action.value}) is not a move the platform authorised")
            continue
        # A step rolled back before its tag existed may have planned the same name: the live one counts.
        candidates = [r for r in intents.values() if r.payload.get("stage_tag") == tag.name]
        live = [r for r in candidates if r.payload["intent_id"] not in aborted]
        if not candidates:
            problems.append(f"production tag {tag.name} has no assignment record in the audit log")
            continue
        if not live:
            problems.append(f"production tag {tag.name} belongs to an assignment step that was rolled back")
            continue
        intent = live[-1]
        intent_id = intent.payload["intent_id"]
        if tag.target != intent.payload.get("target_commit"):
            problems.append(f"production tag {tag.name} points at another commit than its assignment record")
            continue
        done = completed.get(intent_id)
        if done is not None and done.payload.get("tag_object") != tag.object:
            problems.append(f"production tag {tag.name} was replaced after its assignment (object differs)")
            continue
        approvals = [ApprovalRecord.model_validate(a) for a in intent.payload.get("approvals") or []]
        prior = records[: records.index(intent)]
        _, _, issues = assignment_problems(
            intent.payload["version"], approvals, prior, registry.keyring, at=datetime.fromisoformat(intent.recorded_at)
        )
        if issues:
            problems.append(f"production tag {tag.name}: its approvals did not hold when used: {issues[0]}")
        elif done is None:
            notes.append(
                f"assignment of {intent.payload['version']} ({tag.name}) was interrupted after its tag; "
                "the next registry write completes it (`eve registry recover`)"
            )
    for intent_id, intent in intents.items():
        if intent_id not in completed and intent_id not in aborted and not any(
            t.name == intent.payload.get("stage_tag") for t in tags
        ):
            notes.append(
                f"assignment of {intent.payload.get('version')} was interrupted before its tag; the next registry "
                "write rolls it back (`eve registry recover`)"
            )
    return problems, notes


def record_problems(tags: list[RegistryTag], records: list[audit.AuditRecord]) -> list[str]:
    """Every completed assignment names an existing tag, as recorded; each decision used once."""
    problems = []
    by_name = {tag.name: tag for tag in tags}
    used: dict[str, str] = {}
    for record in records:
        if record.event != audit.PRODUCTION_ASSIGNED:
            continue
        name = record.payload.get("stage_tag")
        tag = by_name.get(name)
        if tag is None:
            problems.append(f"audit record seq {record.seq} assigned production with tag {name}, which the registry no longer has (deleted)")
        elif tag.object != record.payload.get("tag_object"):
            problems.append(f"audit record seq {record.seq}: tag {name} is not the tag object it recorded (replaced)")
        for decision_id in record.payload.get("decision_ids") or []:
            if decision_id in used:
                problems.append(f"audit record seq {record.seq}: decision {decision_id[:12]} already used for {used[decision_id]}")
            used[decision_id] = name
    return problems


def lineage_problems(registry: ModelRegistry, records: list[audit.AuditRecord]) -> list[str]:
    problems = []
    if not (registry.repo_dir / "lineage" / MODEL_NAME).exists():
        return problems
    accepted = {r.record_hash: r for r in records if r.event == audit.REVIEW_DECISION_ACCEPTED}
    manifests = {m.version: m for m in iter_lineage(registry.repo_dir, MODEL_NAME)}
    for version, manifest in sorted(manifests.items(), key=lambda item: item[0] or ""):
        for approval in manifest.approvals:
            record = accepted.get(approval.audit_record_hash)
            recorded = ApprovalRecord.model_validate(record.payload.get("approval") or {}) if record else None
            if recorded is None or recorded.model_dump(exclude={"audit_record_hash"}) != approval.model_dump(
                exclude={"audit_record_hash"}
            ):
                problems.append(
                    f"lineage of {MODEL_NAME}@{version}: approval by {approval.reviewer} is not an accepted decision "
                    "of the audit log"
                )
    for record in records:
        if record.event != audit.PRODUCTION_ASSIGNED:
            continue
        version = (record.subject or "").split("@")[-1]
        held = {a.audit_record_hash for a in manifests[version].approvals} if version in manifests else set()
        for record_hash in record.payload.get("decision_record_hashes") or []:
            if record_hash not in held:
                problems.append(
                    f"lineage of {MODEL_NAME}@{version} lacks the approval (audit record {record_hash[:12]}) "
                    f"that moved production with {record.payload.get('stage_tag')}"
                )
    return problems


__all__ = ["PlatformVerification", "verify_platform"]
