"""Issue 15, credentials: a canary password in the DVC remote URL goes to the remote and nowhere else.

The data flow runs on a real Prefect server against a real HTTP DVC remote that requires basic
authentication; a push with a wrong password fails inside a flow too. Then the whole platform home
(every file, and every object of every git repository in it: commits, trees, blobs, tag messages),
the Prefect server's home and database, the client's result storage, DVC's site cache, the captured
logs and the console output are searched for the canary, and it is in none of them.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.tasks.data.http_remote import HttpRemote

pytestmark = pytest.mark.slow


def find_secret(secret: str, roots: list[Path]) -> list[str]:
    """Every place under ``roots`` that holds ``secret``: raw file bytes, and git objects decompressed."""
    needle = secret.encode()
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            if path.is_file() and not path.is_symlink():
                try:
                    if needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
            if path.is_dir() and (path / ".git").exists():
                objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=path,
                                         capture_output=True, check=True).stdout
                if needle in objects:
                    found.append(f"git objects of {path}")
    return found


def test_a_canary_password_in_the_dvc_remote_url_reaches_only_the_remote(
    prefect_server, eve_home, tmp_path, tmp_path_factory, monkeypatch, caplog, capfd
) -> None:
    from prefect import flow

    from flows.data_flow import DataFlowParams, data_pipeline
    from tasks.data.demo_source import DemoDataConfig, demo_sources, generate_demo_data
    from tasks.data.versioning import DatasetPushError, DatasetRegistry, RemoteConfig

    canary = "canary-" + secrets.token_hex(12)
    caplog.set_level(logging.DEBUG)
    sources = demo_sources(generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny()))
    with HttpRemote(tmp_path / "remote", user="eve", password=canary) as remote:
        monkeypatch.setenv("EVE_DVC_REMOTE", remote.url_with("eve", canary))
        params = DataFlowParams(dataset_name="canary", use_demo_source=False, sources=sources.captions,
                                sft_sources=sources.sft, curate=False, max_items_per_shard=50)
        result = data_pipeline(params)
        assert remote.authorised > 0 and remote.refused == 0  # the credentials did travel, in the header
        registry = DatasetRegistry.from_settings()
        assert {v.name for v in registry.list_versions()} == {"canary-raw", "canary-sft"}
        assert result.raw_version.remote_url == remote.url
        pulled = registry.pull_version(result.raw_version.tag, tmp_path / "pulled")  # a clean clone pulls too
        assert (pulled / "manifest.json").exists()

        # A wrong password (which contains the canary) fails the push inside a flow: the retry warnings,
        # the exception and the flow's failure message Prefect stores must not carry it either.
        @flow(name="canary-push-fails")
        def push_with_a_wrong_password(dataset_dir: str) -> None:
            wrong = DatasetRegistry(eve_home / "datasets-wrong", RemoteConfig.from_url(remote.url_with("eve", canary + "-x")),
                                    push_attempts=2, sleep=lambda seconds: None)
            wrong.register(dataset_dir, "canary-wrong")

        with pytest.raises(DatasetPushError) as raised:
            push_with_a_wrong_password(result.ingest.dataset_dir)
        assert canary not in str(raised.value) and remote.refused > 0

    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # run logs reach the server's database before it is searched
    basetemp = tmp_path_factory.getbasetemp()
    prefect_homes = sorted(basetemp.glob("prefect-server-home*")) + sorted(basetemp.glob("prefect-client-home*"))
    assert prefect_homes and any(home.rglob("*.db") for home in prefect_homes)
    with DatasetRegistry.from_settings()._dvc_repo(eve_home / "datasets") as repo:
        dvc_site_cache = Path(repo.site_cache_dir)
    output = capfd.readouterr()
    assert find_secret(canary, [eve_home, *prefect_homes, dvc_site_cache, Path(os.environ.get("PREFECT_HOME", eve_home))]) == []
    assert canary not in caplog.text and canary not in output.out and canary not in output.err
    assert "failed" in caplog.text or "failed" in output.err  # the failure was logged, without the secret


def test_the_model_registry_commits_no_credentials_of_its_remote(eve_home, monkeypatch) -> None:
    from tasks.platform import PlatformSettings
    from tasks.registry import ModelRegistry

    canary = "canary-" + secrets.token_hex(12)
    monkeypatch.setenv("EVE_DVC_REMOTE", f"http://eve:{canary}@127.0.0.1:9/dvc")
    ModelRegistry(PlatformSettings.load()).ensure_initialized()
    assert find_secret(canary, [eve_home]) == []
