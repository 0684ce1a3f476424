"""Dataset versions with DVC: a git+DVC "dataset registry" repository under the platform home.

Mechanism (docs/architecture.md):

- ``<home>/datasets`` is a git repository with DVC initialised. A version of dataset ``NAME`` lives
  at ``versions/NAME/<dataset_hash[:16]>/`` (manifest.json + shards/), tracked by one ``.dvc``
  pointer file whose ``md5`` (``<hex>.dir``) is the version's DVC content hash.
- Registering a version = copy into the repo, ``dvc add``, ``dvc push`` to the remote (retried with
  exponential backoff), then ``git commit`` + an annotated tag ``dataset/NAME/<hash16>`` whose message
  is the JSON ``DatasetVersion`` record. The tag is written last and is the only thing that makes a
  version exist, so an interrupted copy or a failed push never leaves a registered half version
  (the leftovers are uncommitted files, cleaned on failure and ignored by lookups).
- The remote is the local directory ``<home>/dvc-remote`` by default, or ``s3://bucket/prefix`` with
  ``endpointurl`` (or any DVC remote URL, e.g. ``https://``) when configured. It is the default
  remote of the committed ``.dvc/config`` (so a clone pulls as any DVC repository does: ``git clone
  <home>/datasets; dvc pull versions/NAME/<hash16>.dvc``, or ``dvc.api.open(path, repo=..., rev=TAG)``),
  and of ``.dvc/config.local``; it holds no secrets: S3 credentials come from the
  environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), and credentials written into the remote
  URL (``https://user:token@host/path``) are taken out of it when it is read (``tasks.redact``) and
  handed to DVC in memory, as runtime configuration of each ``Repo``: they are never written to a
  file, a tag, a version record, an artifact or a log line.
- Pulling again later works from a clean checkout: ``pull_version`` clones the registry repository
  into a scratch directory, writes the current remote config, ``dvc pull``s the one pointer, checks
  the manifest against the recorded ``dataset_hash``, and moves the result to the destination.
  Teams do the same by hand: ``git clone <registry>; dvc pull versions/NAME/<h>.dvc`` (the remote is committed).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from eve_model.shards import DatasetIntegrityError, verify_dataset
from tasks.platform import PlatformSettings
from tasks.redact import scrub_text, split_url_credentials, url_without_credentials

logger = logging.getLogger(__name__)

REMOTE_NAME = "storage"
TAG_PREFIX = "dataset"
_GIT_IDENTITY = ["-c", "user.name=eve-platform", "-c", "user.email=eve-platform@localhost", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


class DatasetPushError(RuntimeError):
    """The remote stayed unreachable through every retry; nothing was registered."""


class DatasetNotFoundError(LookupError):
    """No registered version matches the given hash or tag."""


class DatasetVersion(BaseModel):
    """One registered dataset version: what later stages pin and lineage records."""

    name: str
    """Dataset name (e.g. ``demo-captions``)."""

    dataset_hash: str
    """The manifest's sha256 over its shard list (eve_model.shards)."""

    dvc_md5: str
    """DVC's directory hash (``<md5>.dir``) of the version, as in its ``.dvc`` pointer."""

    num_items: int
    num_shards: int
    num_bytes: int
    """Bytes of the whole version directory as DVC counts it."""

    path_in_repo: str
    """Version directory relative to the registry repository root."""

    tag: str
    """Annotated git tag that registers the version."""

    commit: str = ""
    """Registry repository commit holding the pointer file."""

    remote_url: str
    """Where the data was pushed (no credentials: they are stripped on the way in, also from older records)."""

    registered_at_unix: float = 0.0

    @field_validator("remote_url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return url_without_credentials(value) if "://" in value else value

    @property
    def pointer_path(self) -> str:
        return f"{self.path_in_repo}.dvc"


class Registration(BaseModel):
    """The outcome of registering a dataset: the version, and whether this registration created it."""

    version: DatasetVersion
    created: bool
    """False when the same content was already registered under the name (nothing was written)."""


class RemoteConfig(BaseModel):
    """A DVC remote: a directory or a URL. Credentials are held apart from the URL and never written."""

    url: str
    """Directory path or remote URL (``s3://bucket/prefix``, ``https://host/path``), without credentials."""

    user: str | None = Field(default=None, exclude=True, repr=False)
    """User (or S3 access key id) taken out of the configured URL; None when it had none."""

    password: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """Password (or S3 secret key) taken out of the configured URL; in memory only."""

    endpoint_url: str | None = None
    """S3 endpoint (SeaweedFS, MinIO, ...); None for AWS or a directory remote."""

    connect_timeout_seconds: int = 10
    read_timeout_seconds: int = 60

    def dvc_options(self) -> dict[str, str]:
        options = {"url": self.url}
        if self.url.startswith("s3://"):
            options["connect_timeout"] = str(self.connect_timeout_seconds)
            options["read_timeout"] = str(self.read_timeout_seconds)
            if self.endpoint_url:
                options["endpointurl"] = self.endpoint_url
        return options

    def runtime_config(self, remote_name: str = REMOTE_NAME) -> dict | None:
        """DVC configuration given to each ``Repo`` in memory (``Repo(root, config=...)``, also
        ``Repo.get``): the credentials of remote ``remote_name``, if the URL had any."""
        if self.user is None and self.password is None:
            return None
        password = self.password.get_secret_value() if self.password else None
        if self.url.startswith("s3://"):
            options = {"access_key_id": self.user, "secret_access_key": password}
        else:  # http(s), webdav: basic authentication
            options = {"auth": "basic", "user": self.user or "", "password": password or ""}
        return {"remote": {remote_name: {key: value for key, value in options.items() if value is not None}}}

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> "RemoteConfig":
        """A remote from a configured URL, credentials (``scheme://user:password@...``) split off."""
        clean, user, password = split_url_credentials(url)
        return cls(url=clean, endpoint_url=endpoint_url, user=user, password=SecretStr(password) if password else None)

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> "RemoteConfig":
        if settings.dvc_remote_url:
            return cls.from_url(settings.dvc_remote_url, settings.s3_endpoint_url)
        return cls(url=str(settings.local_dvc_remote))


def _git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *_GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def write_remote_config(repo_root: Path, remote: RemoteConfig) -> None:
    """Point the repository at ``remote`` through .dvc/config.local (this machine's, uncommitted)."""
    lines = [f"[core]\n    remote = {REMOTE_NAME}\n", f"['remote \"{REMOTE_NAME}\"']\n"]
    lines += [f"    {key} = {value}\n" for key, value in remote.dvc_options().items()]
    (repo_root / ".dvc" / "config.local").write_text("".join(lines))


def commit_remote_config(repo_root: Path, remote: RemoteConfig) -> bool:
    """Record ``remote`` as the default remote in the committed ``.dvc/config`` (URL, endpoint and
    timeouts only: credentials are never in ``dvc_options``), so that a clone of the repository
    (``git clone``; ``dvc pull``; ``dvc.api.open(..., rev=TAG)``) finds the data as any DVC
    repository does. Commits only when it changed; True then."""
    from dvc.config import Config

    with Config(dvc_dir=str(repo_root / ".dvc")).edit("repo") as config:
        if config["core"].get("remote") == REMOTE_NAME and dict(config["remote"].get(REMOTE_NAME, {})) == remote.dvc_options():
            return False
        config["core"]["remote"] = REMOTE_NAME
        config["remote"][REMOTE_NAME] = remote.dvc_options()
    _git(repo_root, "add", ".dvc/config")
    _git(repo_root, "commit", "-q", "-m", f"DVC remote: {url_without_credentials(remote.url)}")
    return True


@contextlib.contextmanager
def _quiet_dvc():
    """DVC logs git hints ("To track the changes with git, run ...") at INFO; our log says what happened."""
    dvc_logger = logging.getLogger("dvc")
    previous = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dvc_logger.setLevel(previous)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class DatasetRegistry:
    """The dataset registry repository: register, look up, check out and pull dataset versions."""

    def __init__(
        self,
        root: str | Path,
        remote: RemoteConfig,
        push_attempts: int = 4,
        retry_backoff_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.root = Path(root)
        self.remote = remote
        self.push_attempts = push_attempts
        self.retry_backoff_seconds = retry_backoff_seconds
        self._sleep = sleep
        self._ensure_repo()

    @classmethod
    def from_settings(cls, settings: PlatformSettings | None = None, **options) -> "DatasetRegistry":
        settings = settings or PlatformSettings.load()
        return cls(settings.path("datasets"), RemoteConfig.from_settings(settings), **options)

    def _ensure_repo(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ".git").exists() or not (self.root / ".dvc").exists():
            # Two first runs at once: one initialises, the other waits (its `git add -A` would
            # otherwise commit the first one's version folder into git, where DVC cannot track it).
            with self._lock():
                self._initialise_repo()
        write_remote_config(self.root, self.remote)
        with self._lock():
            commit_remote_config(self.root, self.remote)

    def _initialise_repo(self) -> None:
        if not (self.root / ".git").exists():
            _git(self.root, "init", "-q", "-b", "main")
        if not (self.root / ".dvc").exists():
            from dvc.repo import Repo

            with _quiet_dvc():
                Repo.init(str(self.root))
            with open(self.root / ".dvc" / "config", "a") as config:
                # Hardlinks: the checked-out version and the cache share bytes (versions are immutable).
                config.write("[core]\n    analytics = false\n[cache]\n    type = \"reflink,hardlink,copy\"\n")
            (self.root / "versions").mkdir(exist_ok=True)
            (self.root / ".gitignore").write_text("/.registry.lock\n")
            _git(self.root, "add", "-A")
            _git(self.root, "commit", "-q", "-m", "Initialise dataset registry")

    def _dvc_repo(self, root: Path):
        """A DVC ``Repo`` of ``root`` with the remote's credentials in memory (never in a config file)."""
        from dvc.repo import Repo

        return Repo(str(root), config=self.remote.runtime_config())

    def _lock(self):
        from filelock import FileLock

        return FileLock(str(self.root / ".registry.lock"), timeout=600)

    # --- lookup ---------------------------------------------------------------------------------

    def list_versions(self, name: str | None = None) -> list[DatasetVersion]:
        """Every registered version (optionally of one dataset), oldest first."""
        pattern = f"refs/tags/{TAG_PREFIX}/{name}/" if name else f"refs/tags/{TAG_PREFIX}/"
        # one git call for all tags: name and message separated by \x1f, records by \x1e
        out = _git(self.root, "for-each-ref", "--sort=creatordate", "--format=%(refname:short)%1f%(contents)%1e", pattern)
        versions = []
        for record in out.split("\x1e"):
            if not record.strip():
                continue
            tag, _, message = record.strip("\n").partition("\x1f")
            try:
                versions.append(DatasetVersion.model_validate_json(message.strip()))
            except ValueError:
                logger.warning("tag %s does not hold a dataset version record; skipped", tag)
        return versions

    def find(self, key: str) -> DatasetVersion:
        """A version by dataset_hash, DVC md5 (with or without ``.dir``), a unique prefix, or tag.

        The same content registered under two names matches twice; either serves (same bytes)."""
        matches = [
            v for v in self.list_versions()
            if key in (v.tag, v.dataset_hash, v.dvc_md5, v.dvc_md5.removesuffix(".dir"))
            or (len(key) >= 8 and (v.dataset_hash.startswith(key) or v.dvc_md5.startswith(key)))
        ]
        if not matches:
            raise DatasetNotFoundError(f"no dataset version {key!r} in {self.root}")
        if len({m.dataset_hash for m in matches}) > 1:
            raise DatasetNotFoundError(f"{key!r} is ambiguous: {[m.tag for m in matches]}")
        return matches[0]  # one content; several names may share it, any copy serves

    # --- register -------------------------------------------------------------------------------

    def register(self, dataset_dir: str | Path, name: str, dataset_hash: str | None = None) -> DatasetVersion:
        """Copy a finished dataset into the registry, push it, then tag it; idempotent per hash.

        With ``dataset_hash`` an already registered version of ``name`` is returned without reading
        ``dataset_dir`` at all (it may be gone: staging is disposable once a version is registered).
        Raises ``DatasetPushError`` (after ``push_attempts`` tries with exponential backoff) when the
        remote is unreachable; nothing is registered then and ``dataset_dir`` is left untouched.
        """
        return self.register_version(dataset_dir, name, dataset_hash).version

    def register_version(self, dataset_dir: str | Path, name: str, dataset_hash: str | None = None) -> "Registration":
        """``register``, also saying whether this call created the version (False: it existed already)."""
        if dataset_hash is not None:
            known = [v for v in self.list_versions(name) if v.dataset_hash == dataset_hash]
            if known:
                return Registration(version=known[0], created=False)
        manifest = verify_dataset(dataset_dir, expected_hash=dataset_hash)
        short = manifest.dataset_hash[:16]
        tag = f"{TAG_PREFIX}/{name}/{short}"
        with self._lock():
            existing = [v for v in self.list_versions(name) if v.dataset_hash == manifest.dataset_hash]
            if existing:
                return Registration(version=existing[0], created=False)
            relative = f"versions/{name}/{short}"
            target = self.root / relative
            self._discard_unregistered(relative)
            staging = target.parent / f".staging-{uuid.uuid4().hex}"
            staging.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(dataset_dir, staging)
            staging.rename(target)
            try:
                with _quiet_dvc(), self._dvc_repo(self.root) as repo:
                    repo.add([str(target)])
                self._push_with_retries(f"{relative}.dvc", what=f"dataset {name} ({manifest.dataset_hash})")
            except BaseException:
                self._discard_unregistered(relative)
                raise
            dvc_md5 = _read_pointer_md5(self.root / f"{relative}.dvc")
            version = DatasetVersion(
                name=name,
                dataset_hash=manifest.dataset_hash,
                dvc_md5=dvc_md5,
                num_items=manifest.num_items,
                num_shards=len(manifest.shards),
                num_bytes=_dir_size(target),
                path_in_repo=relative,
                tag=tag,
                remote_url=url_without_credentials(self.remote.url),
                registered_at_unix=round(time.time(), 3),
            )
            _git(self.root, "add", f"{relative}.dvc", str(Path(relative).parent / ".gitignore"))
            _git(self.root, "commit", "-q", "-m", f"Dataset {name} {short} ({manifest.num_items} items, {dvc_md5})")
            version.commit = _git(self.root, "rev-parse", "HEAD").strip()
            # The tag is the registration: written last, atomically by git.
            _git(self.root, "tag", "-a", tag, "-m", version.model_dump_json())
            logger.info("registered %s -> %s", tag, dvc_md5)
            return Registration(version=version, created=True)

    def _push_with_retries(self, pointer: str, what: str) -> None:
        last_error: BaseException | None = None
        for attempt in range(1, self.push_attempts + 1):
            try:
                with _quiet_dvc(), self._dvc_repo(self.root) as repo:
                    repo.push(targets=[str(self.root / pointer)], remote=REMOTE_NAME)
                return
            except Exception as exc:  # DVC wraps network failures in several exception types
                last_error = exc
                if attempt == self.push_attempts:
                    break
                delay = self.retry_backoff_seconds * 2 ** (attempt - 1)
                logger.warning("push of %s to %s failed (attempt %d/%d: %s); retrying in %.1fs",
                               what, url_without_credentials(self.remote.url), attempt, self.push_attempts,
                               scrub_text(f"{exc.__class__.__name__}: {exc}"), delay)
                self._sleep(delay)
        # Built from scrubbed parts and not chained: Prefect stores this message and the exception
        # outside the log, and the cause's text is not ours to trust (tasks.redact).
        raise DatasetPushError(scrub_text(
            f"could not push {what} to the DVC remote {url_without_credentials(self.remote.url)}"
            f"{' at ' + url_without_credentials(self.remote.endpoint_url) if self.remote.endpoint_url else ''} after "
            f"{self.push_attempts} attempts ({last_error.__class__.__name__}: {last_error}). "
            "Nothing was registered; check that the remote is reachable and credentials are set, then rerun."
        )) from None

    def _discard_unregistered(self, relative: str) -> None:
        """Remove leftovers of an attempt that never got its tag (workspace copy, pointer, staging)."""
        target = self.root / relative
        if target.exists():
            shutil.rmtree(target)
        for leftover in target.parent.glob(".staging-*") if target.parent.exists() else []:
            shutil.rmtree(leftover, ignore_errors=True)
        pointer = self.root / f"{relative}.dvc"
        if pointer.exists():
            pointer.unlink()
        gitignore = target.parent / ".gitignore"
        if gitignore.exists():
            tracked = _git(self.root, "ls-files", str(gitignore.relative_to(self.root))).strip()
            if tracked:
                _git(self.root, "checkout", "--", str(gitignore.relative_to(self.root)))
            else:
                gitignore.unlink()

    # --- read back ------------------------------------------------------------------------------

    def checkout(self, key: str) -> Path:
        """Local directory of a registered version, pulling it from the remote if it is not here."""
        version = self.find(key)
        target = self.root / version.path_in_repo
        try:
            verify_dataset(target, expected_hash=version.dataset_hash, check_shards=False)
            return target
        except DatasetIntegrityError:
            pass
        with self._lock(), _quiet_dvc(), self._dvc_repo(self.root) as repo:
            repo.pull(targets=[str(self.root / version.pointer_path)], remote=REMOTE_NAME)
        verify_dataset(target, expected_hash=version.dataset_hash)
        return target

    def pull_version(self, key: str, destination: str | Path) -> Path:
        """Fetch a version from the remote through a clean clone of the registry; returns ``destination``."""
        version = self.find(key)
        destination = Path(destination)
        if destination.exists():
            raise FileExistsError(f"{destination} already exists; pull into a new path")
        with tempfile.TemporaryDirectory(prefix="eve-dataset-pull-") as scratch:
            clone = Path(scratch) / "registry"
            subprocess.run(["git", "clone", "-q", "--no-checkout", str(self.root), str(clone)], check=True, capture_output=True)
            _git(clone, "checkout", "-q", version.tag)
            write_remote_config(clone, self.remote)
            with _quiet_dvc(), self._dvc_repo(clone) as repo:
                repo.pull(targets=[str(clone / version.pointer_path)], remote=REMOTE_NAME)
            pulled = clone / version.path_in_repo
            verify_dataset(pulled, expected_hash=version.dataset_hash)
            if _read_pointer_md5(clone / version.pointer_path) != version.dvc_md5:
                raise DatasetIntegrityError(f"{version.tag}: pointer md5 differs from the registered record")
            destination.parent.mkdir(parents=True, exist_ok=True)
            # copy, not move: pulled files may be hardlinks into the scratch cache
            shutil.copytree(pulled, destination)
        return destination


def resolve_dataset(location: str | Path, dataset_hash: str, registry: DatasetRegistry | None = None) -> Path:
    """A local directory holding dataset ``dataset_hash``: ``location`` if it still does, else the
    registered version checked out (pulled from the remote if needed). Stages pass (location, hash)
    pairs, so a deleted staging directory or a cached task result never breaks a rerun."""
    try:
        verify_dataset(location, expected_hash=dataset_hash, check_shards=False)
        return Path(location)
    except DatasetIntegrityError:
        return (registry or DatasetRegistry.from_settings()).checkout(dataset_hash)


def _read_pointer_md5(pointer: Path) -> str:
    import yaml

    return yaml.safe_load(pointer.read_text())["outs"][0]["md5"]


__all__ = [
    "DatasetNotFoundError",
    "DatasetPushError",
    "DatasetRegistry",
    "DatasetVersion",
    "Registration",
    "RemoteConfig",
    "commit_remote_config",
    "resolve_dataset",
    "write_remote_config",
]
