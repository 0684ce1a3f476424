"""``eve quality``: the gate from the command line prints the flow's report and exits by verdict."""

from __future__ import annotations

from pathlib import Path

from cli.main import main
from tasks.quality.config import CaptionGateThresholds
from tasks.quality.gate import gate_caption_dataset
from tasks.quality.report import render_markdown
from tests.tasks.quality.test_gate import write_dataset

LABELS = {"hen": "A chicken.", "flower": "Hibiscus", "upper": "The letter A.", "lower": "The letter a.",
          "upper-outline": "The letter A.", "cone": "A traffic cone."}


def test_check_prints_the_flows_report_with_the_rules_in_force(tmp_path, eve_home, capsys) -> None:
    source = write_dataset(tmp_path / "labels", LABELS)
    status = main(["quality", "check", str(source), "--profile", "short-labels", "--set", "max_filtered_fraction=0.1",
                   "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert printed.startswith("# Quality gate PASSED: eve-caption-quality") and "(profile short-labels)" in printed
    assert "## Rules in force" in printed and "| max_filtered_fraction | 0.1 | 0.2 (overridden) |" in printed
    assert "| min_words | 1 | same |" in printed and "num_words >= 1" in printed
    # The Data Docs of the version are kept under the platform home and linked from the report.
    index = eve_home / "quality" / next(p.name for p in (eve_home / "quality").iterdir() if p.is_dir()) / "gx"
    assert (index / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()
    assert "GX Data Docs of this dataset version: [file://" in printed

    # The same report as the flow's artifact: the same gate on the same input renders the same text.
    again = gate_caption_dataset(source, tmp_path / "out", CaptionGateThresholds(profile="short-labels",
                                                                                  max_filtered_fraction=0.1))
    def without_run_time(report: str) -> str:  # this validation's Data Docs page is named by its run time
        return "\n".join(line for line in report.split("## Metrics vs previous version")[0].splitlines()
                         if "GX Data Docs" not in line)

    assert without_run_time(render_markdown(again)) == without_run_time(printed)


def test_check_exits_1_when_rejected_and_2_on_bad_arguments(tmp_path, eve_home, capsys) -> None:
    source = write_dataset(tmp_path / "labels", LABELS)
    assert main(["quality", "check", str(source), "--output", str(tmp_path / "out")]) == 1  # teacher profile
    assert "# Quality gate FAILED" in capsys.readouterr().out

    assert main(["quality", "check", str(source), "--set", "max_filtered_fraction=2"]) == 2
    assert "max_filtered_fraction: Input should be less than or equal to 1" in capsys.readouterr().out
    assert main(["quality", "check", str(source), "--set", "min_word=2"]) == 2
    assert "unknown threshold(s) ['min_word']" in capsys.readouterr().out
    assert main(["quality", "check", str(tmp_path / "nowhere")]) == 2
    assert "error:" in capsys.readouterr().out
    assert not Path(tmp_path / "nowhere").exists()


def test_profiles_lists_every_threshold(capsys) -> None:
    assert main(["quality", "profiles"]) == 0
    printed = capsys.readouterr().out
    assert "teacher-captions" in printed and "short-labels" in printed and "max_cross_image_repeat_rate" in printed
