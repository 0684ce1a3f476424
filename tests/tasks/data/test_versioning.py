"""DVC dataset versions: register, look up, pull back from a clean clone; S3 round trip and outage."""

from __future__ import annotations

import hashlib
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from eve_model.shards import ShardSample, ShardWriter, verify_dataset
from tasks.data.versioning import DatasetPushError, DatasetRegistry, RemoteConfig
from tasks.platform import PlatformSettings


def _make_dataset(path: Path, num_items: int = 7, salt: str = "") -> str:
    with ShardWriter(path, max_items_per_shard=3) as writer:
        for index in range(num_items):
            payload = hashlib.sha256(f"{salt}{index}".encode()).digest() * 40  # stand-in bytes; not decoded here
            writer.write(ShardSample(f"item-{index}", {"caption": f"caption {salt}{index}"}, payload, "png"))
    return writer.manifest.dataset_hash


def _file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_local_remote_register_find_and_pull_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EVE_HOME", str(tmp_path / "home"))
    dataset_hash = _make_dataset(tmp_path / "ds")
    original = _file_digests(tmp_path / "ds")
    registry = DatasetRegistry.from_settings(PlatformSettings.load())

    version = registry.register(tmp_path / "ds", "unit")
    assert version.dataset_hash == dataset_hash and version.num_items == 7 and version.num_shards == 3
    assert version.dvc_md5.endswith(".dir")
    assert registry.register(tmp_path / "ds", "unit") == version  # same content: same version, no new tag
    assert [v.tag for v in registry.list_versions()] == [version.tag]
    assert registry.find(version.dvc_md5).tag == registry.find(dataset_hash[:12]).tag == version.tag
    assert any((tmp_path / "home" / "dvc-remote").rglob("*")), "nothing reached the local remote"

    shutil.rmtree(tmp_path / "ds")
    shutil.rmtree(registry.root / version.path_in_repo)
    shutil.rmtree(registry.root / ".dvc" / "cache")
    pulled = registry.pull_version(version.tag, tmp_path / "pulled")
    assert _file_digests(pulled) == original
    assert registry.checkout(dataset_hash) == registry.root / version.path_in_repo  # restored from the remote too
    verify_dataset(registry.checkout(dataset_hash), expected_hash=dataset_hash)


@pytest.mark.slow
def test_s3_round_trip_after_deleting_every_local_copy(s3_env, tmp_path: Path, monkeypatch) -> None:
    import s3fs

    prefix = f"s3://{s3_env.bucket}/dvc-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("EVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EVE_DVC_REMOTE", prefix)
    dataset_hash = _make_dataset(tmp_path / "ds", num_items=11)
    original = _file_digests(tmp_path / "ds")
    registry = DatasetRegistry.from_settings(PlatformSettings.load())
    version = registry.register(tmp_path / "ds", "s3-unit")
    assert version.remote_url == prefix

    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, skip_instance_cache=True)
    assert fs.find(prefix.removeprefix("s3://")), "the remote prefix is empty after push"
    config_local = (registry.root / ".dvc" / "config.local").read_text()
    assert s3_env.secret_key not in config_local and s3_env.access_key not in config_local

    shutil.rmtree(tmp_path / "ds")
    shutil.rmtree(registry.root / version.path_in_repo)
    shutil.rmtree(registry.root / ".dvc" / "cache")
    pulled = registry.pull_version(dataset_hash, tmp_path / "pulled")
    assert _file_digests(pulled) == original
    assert verify_dataset(pulled).dataset_hash == dataset_hash


@pytest.mark.slow
def test_s3_outage_retries_then_fails_without_registering(s3_env, tmp_path: Path, monkeypatch) -> None:
    from tests.fixtures.s3_server import SeaweedServer

    # botocore's own connection retries (5 by default) would multiply every attempt; the
    # platform's backoff loop is what is under test here.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    private = SeaweedServer(
        tmp_path / "private-s3", bucket="outage", access_key=s3_env.access_key, secret_key=s3_env.secret_key
    ).start()
    remote = RemoteConfig(url="s3://outage/dvc", endpoint_url=private.endpoint_url, connect_timeout_seconds=2)
    delays: list[float] = []
    registry = DatasetRegistry(tmp_path / "registry", remote, push_attempts=3, retry_backoff_seconds=0.5, sleep=delays.append)
    _make_dataset(tmp_path / "first", salt="a")
    registry.register(tmp_path / "first", "outage")  # the remote works ...
    private.stop()  # ... until it does not
    second_hash = _make_dataset(tmp_path / "second", salt="b")
    before = _file_digests(tmp_path / "second")

    with pytest.raises(DatasetPushError, match=r"after 3 attempts.*Nothing was registered") as failure:
        registry.register(tmp_path / "second", "outage")
    assert private.endpoint_url in str(failure.value)
    assert delays == [0.5, 1.0]  # exponential backoff between the 3 attempts
    assert [v.dataset_hash for v in registry.list_versions()] != [] and all(
        v.dataset_hash != second_hash for v in registry.list_versions()
    )
    status = registry.root.joinpath(".git").exists() and __import__("subprocess").run(
        ["git", "status", "--porcelain"], cwd=registry.root, capture_output=True, text=True
    ).stdout
    assert status.strip() == "", f"half-registered leftovers: {status}"
    assert _file_digests(tmp_path / "second") == before  # the input is untouched

    registry.remote = RemoteConfig(url=f"s3://{s3_env.bucket}/recovered-{uuid.uuid4().hex[:8]}", endpoint_url=s3_env.endpoint_url)
    from tasks.data.versioning import write_remote_config

    write_remote_config(registry.root, registry.remote)
    assert registry.register(tmp_path / "second", "outage").dataset_hash == second_hash  # rerun once S3 is back


def test_an_interrupted_registration_leaves_no_version_and_can_be_rerun(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    registry = DatasetRegistry(tmp_path / "registry", RemoteConfig(url=str(tmp_path / "remote")))
    dataset_hash = _make_dataset(tmp_path / "ds")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process is interrupted after `dvc add`, mid-push

    monkeypatch.setattr(DatasetRegistry, "_push_with_retries", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.register(tmp_path / "ds", "interrupted")
    assert registry.list_versions() == []
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=registry.root, capture_output=True, text=True).stdout
    assert "versions/" not in status, status

    monkeypatch.undo()
    version = registry.register(tmp_path / "ds", "interrupted")
    assert version.dataset_hash == dataset_hash and len(registry.list_versions()) == 1


def test_the_same_content_under_two_names_resolves_by_hash(tmp_path: Path) -> None:
    from tasks.data.versioning import DatasetNotFoundError, resolve_dataset

    registry = DatasetRegistry(tmp_path / "registry", RemoteConfig(url=str(tmp_path / "remote")))
    dataset_hash = _make_dataset(tmp_path / "ds")
    first, second = registry.register(tmp_path / "ds", "alpha"), registry.register(tmp_path / "ds", "beta")
    assert first.tag != second.tag and first.dataset_hash == second.dataset_hash
    assert registry.find(dataset_hash).dataset_hash == dataset_hash
    shutil.rmtree(tmp_path / "ds")
    assert verify_dataset(resolve_dataset(tmp_path / "ds", dataset_hash, registry)).dataset_hash == dataset_hash
    other_hash = _make_dataset(tmp_path / "other", salt="x")
    with pytest.raises(DatasetNotFoundError, match="no dataset version"):
        registry.find(other_hash)


def test_a_clone_of_the_registry_pulls_like_any_dvc_repository_and_only_new_versions_count(tmp_path: Path) -> None:
    import subprocess

    import dvc.api

    registry = DatasetRegistry(tmp_path / "registry", RemoteConfig(url=str(tmp_path / "remote")))
    _make_dataset(tmp_path / "ds")
    first = registry.register_version(tmp_path / "ds", "unit")
    again = registry.register_version(tmp_path / "ds", "unit")
    assert (first.created, again.created, again.version) == (True, False, first.version)  # only the first is announced

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(registry.root), str(clone)], check=True)
    assert "config.local" not in {p.name for p in (clone / ".dvc").iterdir()}  # nothing machine-specific came along
    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull", "-q", f"{first.version.path_in_repo}.dvc"],
                            cwd=clone, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    assert _file_digests(clone / first.version.path_in_repo) == _file_digests(registry.root / first.version.path_in_repo)
    manifest = dvc.api.read(f"{first.version.path_in_repo}/manifest.json", repo=str(clone), rev=first.version.tag)
    assert first.version.dataset_hash in manifest
