"""Where the platform keeps its state: one home directory (docs/operations.md, "Where state lives").

Everything local lives under ``PlatformSettings.home``: the local DVC remote, the registry
repository, Prefect's home, W&B offline runs, stage outputs and caches. Teams override single
locations with environment variables; nothing here is read from the network.

Two locations hold secrets and may live elsewhere (docs/security.md, "Keys and accounts"): the
signing keys (``EVE_KEYS_DIR``, default ``<home>/keys``) and the account store with the service
credentials (``EVE_AUTH_DIR``, default ``<home>/auth``). Only the platform's own services (the
authenticating Prefect server, the worker, the operator's commands) should be able to read them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return Path(os.environ.get("EVE_HOME", REPO_ROOT / ".eve-home")).resolve()


class PlatformSettings(BaseModel):
    """Locations and endpoints shared by every flow and task. ``load()`` reads ``EVE_*`` env vars."""

    home: Path = Field(default_factory=_default_home)
    """Root of all local platform state (git-ignored when inside the checkout)."""

    dvc_remote_url: str | None = None
    """DVC remote for datasets and model weights: a directory or ``s3://bucket/prefix``.
    None means ``<home>/dvc-remote``."""

    s3_endpoint_url: str | None = None
    """S3 endpoint for an ``s3://`` remote (e.g. a SeaweedFS or MinIO URL); None means AWS."""

    registry_url: str | None = None
    """Git remote of the model registry; None means the local repository ``<home>/registry``."""

    keys_override: Path | None = None
    """Directory of the signing keys (``EVE_KEYS_DIR``); None means ``<home>/keys``."""

    auth_override: Path | None = None
    """Directory of the account store and service credentials (``EVE_AUTH_DIR``); None means ``<home>/auth``."""

    @classmethod
    def load(cls) -> "PlatformSettings":
        """Settings from the environment: EVE_HOME, EVE_DVC_REMOTE, EVE_S3_ENDPOINT, EVE_REGISTRY_URL,
        EVE_KEYS_DIR, EVE_AUTH_DIR."""
        keys = os.environ.get("EVE_KEYS_DIR")
        auth = os.environ.get("EVE_AUTH_DIR")
        return cls(
            home=_default_home(),
            dvc_remote_url=os.environ.get("EVE_DVC_REMOTE") or None,
            s3_endpoint_url=os.environ.get("EVE_S3_ENDPOINT") or None,
            registry_url=os.environ.get("EVE_REGISTRY_URL") or None,
            keys_override=Path(keys).resolve() if keys else None,
            auth_override=Path(auth).resolve() if auth else None,
        )

    def path(self, *parts: str) -> Path:
        """A directory under the home, created on first use."""
        target = self.home.joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        return target

    @property
    def teacher_feature_cache_dir(self) -> Path:
        """Memoised vision-teacher features (``eve_model.teacher_cache``), shared by curation, the
        training stages and the contamination check where each opts in (the embedded default):
        each distinct image is embedded once."""
        return self.path("cache", "teacher-features")

    @property
    def local_dvc_remote(self) -> Path:
        return self.path("dvc-remote")

    @property
    def registry_dir(self) -> Path:
        return self.path("registry")

    @property
    def runs_dir(self) -> Path:
        """Stage outputs, checkpoints and job logs, one folder per run."""
        return self.path("runs")

    @property
    def cache_dir(self) -> Path:
        return self.path("cache")

    @property
    def wandb_dir(self) -> Path:
        return self.path("wandb")

    @property
    def keys_dir(self) -> Path:
        """Signing keys (``tasks/signing.py``): private keys 0600 in a 0700 directory."""
        return _private_dir(self.keys_override or self.home / "keys")

    @property
    def auth_dir(self) -> Path:
        """Accounts (``tasks/accounts.py``) and the service credentials of the local services."""
        return _private_dir(self.auth_override or self.home / "auth")

    @property
    def policy_path(self) -> Path:
        """The signed approval policy (``tasks/policy.py``): platform configuration, not a flow parameter."""
        return self.path("config") / "approval-policy.json"


def _private_dir(path: Path) -> Path:
    """``path`` created if missing, readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path
