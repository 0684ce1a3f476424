"""The progress line a training job prints: throttled, parseable by the platform, honest ETA on resume."""

from __future__ import annotations

import pytest

from eve_model.training.progress import (
    ProgressPrinter,
    ProgressReport,
    format_duration,
    format_progress_line,
    parse_duration,
    parse_progress_line,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (3600 * 2 + 5 * 60, "2h05m"), (86400 * 3 + 3600 * 4, "3d04h")],
)
def test_durations_read_like_a_person_writes_them_and_parse_back(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, abs=60 if "h" in text else 1)
    assert format_duration(None) == "?" and parse_duration("?") is None


def test_a_line_round_trips_through_the_parser_even_with_a_scheduler_prefix():
    report = ProgressReport(stage="2", step=120, total_steps=500, loss=3.41234, samples_per_second=45.12,
                            elapsed_seconds=62, eta_seconds=197)
    line = format_progress_line(report)
    assert line == ("[eve.progress] stage 2 step 120/500 (24.0%) loss 3.4123 | 45.1 samples/s | elapsed 1m02s | "
                    "ETA 3m17s")
    parsed = parse_progress_line("0: 2026-12-03 10:00:01 " + line)
    assert parsed is not None
    assert (parsed.stage, parsed.step, parsed.total_steps, parsed.loss) == ("2", 120, 500, 3.4123)
    assert (parsed.samples_per_second, parsed.elapsed_seconds, parsed.eta_seconds) == (45.1, 62, 197)
    assert parsed.percent == pytest.approx(24.0)
    unknown = format_progress_line(ProgressReport(stage="base-llm", step=0, total_steps=10))
    assert parse_progress_line(unknown).loss is None and parse_progress_line(unknown).eta_seconds is None


@pytest.mark.parametrize("line", ["[eve.train] stage 2 complete after 500 steps", "loss 3.2 | step 4/5", "",
                                  "tiny-stage-2:  45%|████▌ | 45/100 [00:03<00:04, 12.1step/s]"])
def test_other_lines_are_not_progress(line):
    assert parse_progress_line(line) is None


def test_lines_come_at_the_first_step_every_interval_and_the_last_step_never_more_often():
    clock, lines = FakeClock(), []
    printer = ProgressPrinter("1", total_steps=100, start_step=0, interval_seconds=10, emit=lines.append, clock=clock)
    for step in range(1, 101):
        clock.now += 0.5  # 0.5 s a step: 50 s in all
        printer.step_done(step, loss=1.0 / step, samples_per_second=32.0)
    steps = [parse_progress_line(line).step for line in lines]
    assert steps[0] == 1 and steps[-1] == 100
    assert steps[1:-1] == [21, 41, 61, 81]  # one line per 10 s of wall time
    assert len(lines) == 6


def test_the_eta_counts_only_this_attempts_steps_after_a_resume():
    clock, lines = FakeClock(), []
    printer = ProgressPrinter("3", total_steps=400, start_step=300, interval_seconds=1, emit=lines.append, clock=clock)
    clock.now += 20  # the first step after the resume took 20 s (model build, warm-up)
    printer.step_done(301, loss=2.0, samples_per_second=8.0)
    for step in range(302, 311):
        clock.now += 2
        printer.step_done(step, loss=2.0, samples_per_second=8.0)
    last = parse_progress_line(lines[-1])
    assert last.step == 310 and last.elapsed_seconds == 38
    # 38 s for 10 steps of this attempt -> 3.8 s a step for the 90 left (the 300 earlier steps do not count).
    assert last.eta_seconds == pytest.approx(342, abs=1)


def test_other_ranks_print_nothing():
    lines = []
    printer = ProgressPrinter("1", total_steps=3, start_step=0, interval_seconds=0, enabled=False, emit=lines.append)
    for step in (1, 2, 3):
        assert not printer.step_done(step, 1.0, 1.0)
    assert lines == []
