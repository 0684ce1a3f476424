"""`eve data` commands through the real console entry point (demo generation itself: test_demo_source.py)."""

from __future__ import annotations

from cli.main import main
from tasks.data.versioning import DatasetRegistry


def test_versions_and_pull_report_unknown_keys_clearly(eve_home, tmp_path, capsys) -> None:
    assert main(["data", "versions"]) == 0
    assert capsys.readouterr().out == ""  # a fresh home has no versions, and DVC's git hints stay quiet
    assert main(["data", "pull", "deadbeefcafe", str(tmp_path / "out")]) == 1
    assert "no dataset version 'deadbeefcafe'" in capsys.readouterr().out
    assert DatasetRegistry.from_settings().list_versions() == []

