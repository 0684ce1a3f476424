"""The approval policy: who may approve which model, how many approvals, how long (docs/security.md).

The policy is platform configuration, not a flow parameter: one file, ``<home>/config/approval-policy.json``
(``PlatformSettings.policy_path``), written by the operator with ``eve policy set`` and signed with the
platform key. A promotion reads it when it is requested and records it (with its hash) in the signed
request, so the rule that judges a decision is the one in force when the promotion was asked for; the
requester has no say in it. A policy file that was edited by hand fails its signature and no
promotion starts until the operator sets it again.

    from tasks.policy import PromotionPolicy, ReviewRule, save_policy, load_policy
    save_policy(PromotionPolicy(models={"eve": ReviewRule(allowed_reviewers=["bob", "carol"])}), updated_by="ops")
    rule = load_policy().rule_for("eve")
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

from pydantic import BaseModel, Field, ValidationError, model_validator

from tasks.platform import PlatformSettings
from tasks.signing import KeyRing, SignedModel, canonical_json

POLICY_DOMAIN = "eve-approval-policy/1"
DEFAULT_RULE = "*"
"""Key of the rule that applies to models without a rule of their own."""


class PolicyError(RuntimeError):
    """No policy is configured, the policy file was tampered with, or it has no rule for the model."""


class ReviewRule(BaseModel):
    """How one model's promotions are approved."""

    allowed_reviewers: list[str] = Field(min_length=1)
    """Accounts (kind ``user``) whose decisions count; never the requester, never a service account."""

    required_approvals: int = Field(default=1, ge=1)
    """Distinct allowed reviewers who must approve; one rejection rejects the promotion."""

    two_person_rule: bool = False
    """At least two distinct reviewers must approve (raises ``required_approvals`` to 2 if lower)."""

    decision_timeout_seconds: int = Field(default=3 * 24 * 3600, gt=0)
    """Time for the approvals to come in; without them by then the promotion is rejected."""

    decision_validity_seconds: int = Field(default=24 * 3600, gt=0)
    """How long an accepted approval can move production; an older one is expired."""

    @property
    def approvals_needed(self) -> int:
        return max(self.required_approvals, 2 if self.two_person_rule else 1)

    @model_validator(mode="after")
    def _enough_reviewers(self) -> "ReviewRule":
        if len(set(self.allowed_reviewers)) < self.approvals_needed:
            raise ValueError(
                f"{self.approvals_needed} approvals needed but only {len(set(self.allowed_reviewers))} allowed reviewers"
            )
        return self


class PromotionPolicy(BaseModel):
    """Every model's review rule."""

    models: dict[str, ReviewRule]
    """Model (registry artifact) name -> rule; ``*`` applies to models without their own."""

    poll_interval_seconds: int = Field(default=10, gt=0)
    """How often a waiting promotion checks for a submitted decision."""

    def rule_for(self, model: str) -> ReviewRule:
        rule = self.models.get(model) or self.models.get(DEFAULT_RULE)
        if rule is None:
            raise PolicyError(f"the approval policy has no rule for model {model!r} (and no {DEFAULT_RULE!r} rule)")
        return rule

    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.model_dump(mode="json")).encode()).hexdigest()


class PolicyFile(SignedModel):
    """What the policy file holds: the policy, who set it, and the platform's signature."""

    policy: PromotionPolicy
    updated_by: str
    """Who set it (the operator's name as given to ``eve policy set``)."""

    updated_at: str


def save_policy(
    policy: PromotionPolicy,
    updated_by: str,
    settings: PlatformSettings | None = None,
    keyring: KeyRing | None = None,
) -> PolicyFile:
    """Write and sign the policy file (the operator's command; needs the platform key)."""
    settings = settings or PlatformSettings.load()
    keyring = keyring or KeyRing.default(settings)
    document = PolicyFile(policy=policy, updated_by=updated_by, updated_at=datetime.now(timezone.utc).isoformat())
    document.sign_with(keyring, "platform", POLICY_DOMAIN)
    temporary = settings.policy_path.with_suffix(".tmp")
    temporary.write_text(document.model_dump_json(indent=2))
    os.replace(temporary, settings.policy_path)
    return document


def load_policy(settings: PlatformSettings | None = None, keyring: KeyRing | None = None) -> PromotionPolicy:
    """The configured policy after checking the platform's signature; raises PolicyError otherwise."""
    settings = settings or PlatformSettings.load()
    keyring = keyring or KeyRing.default(settings)
    path = settings.policy_path
    if not path.exists():
        raise PolicyError(
            f"no approval policy is configured ({path}); the operator sets one with "
            "`eve policy set --model eve --reviewers NAME[,NAME]`"
        )
    try:
        document = PolicyFile.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as error:
        raise PolicyError(f"{path} is not a policy file: {str(error).splitlines()[0]}") from None
    if not document.verify_with(keyring, "platform", POLICY_DOMAIN):
        raise PolicyError(
            f"{path} is not signed by the platform key (edited outside `eve policy set`); "
            "no promotion starts until the operator sets the policy again"
        )
    return document.policy


def ensure_policy(
    model: str, reviewers: list[str], updated_by: str, settings: PlatformSettings | None = None
) -> PromotionPolicy:
    """The configured policy; when there is none yet, one that lets ``reviewers`` approve ``model``
    (the embedded default's first run). An existing policy is the operator's and is never changed."""
    settings = settings or PlatformSettings.load()
    if settings.policy_path.exists():
        return load_policy(settings)
    policy = PromotionPolicy(models={model: ReviewRule(allowed_reviewers=reviewers)})
    save_policy(policy, updated_by=updated_by, settings=settings)
    return policy


__all__ = [
    "DEFAULT_RULE",
    "PolicyError",
    "PolicyFile",
    "PromotionPolicy",
    "ReviewRule",
    "ensure_policy",
    "load_policy",
    "save_policy",
]
