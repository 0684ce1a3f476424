"""Live progress of a training job: one throttled, human-readable line at a time.

Rank 0 prints a line like::

    [eve.progress] stage 2 step 120/500 (24.0%) loss 3.4120 | 45.1 samples/s | elapsed 1m02s | ETA 3m17s

at the first step, then at most once every ``StageConfig.progress_interval_seconds``, and at the last
step: a 3-minute stage shows a line every few seconds in its log, never a silent stretch followed by
a flood of progress-bar redraws (a log file or a Prefect log is no terminal: every ``\\r`` redraw of
a bar becomes a line there).

The line is the only channel between the job and the platform: the stage task (``tasks/stages.py``)
reads it from the job's streamed log on every backend (local, SLURM, Kubernetes) with
:func:`parse_progress_line` and updates the stage's Prefect progress artifact. Writing and parsing
live here together, so the two cannot drift apart (a round-trip test holds them to each other).

The ETA is the remaining steps times the mean step time of this attempt (a resumed job does not
count the steps an earlier attempt ran, nor their wall time).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from pydantic import BaseModel

PROGRESS_PREFIX = "[eve.progress]"
"""Start of every progress line."""


class ProgressReport(BaseModel):
    """Where a training job stands."""

    stage: str
    """Stage id (``base-llm``, ``1``, ``2``, ``3``)."""

    step: int
    """Completed optimizer steps (of the whole stage, earlier attempts included)."""

    total_steps: int
    """Steps the stage runs in all."""

    loss: float | None = None
    """Training loss of the latest step."""

    samples_per_second: float | None = None
    """Throughput of the latest step, all ranks together."""

    elapsed_seconds: float = 0.0
    """Wall time of this attempt so far."""

    eta_seconds: float | None = None
    """Estimated wall time to the last step (None until a step of this attempt has finished)."""

    @property
    def percent(self) -> float:
        """Share of the stage done, 0-100."""
        return 100.0 * self.step / self.total_steps if self.total_steps else 100.0

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m07s``, ``2h05m``, ``3d04h``; ``?`` for None."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


_DURATION_PART = re.compile(r"(\d+)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float | None:
    """Inverse of :func:`format_duration` (to the second); None for ``?``."""
    if text == "?":
        return None
    return float(sum(int(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text)))


def format_progress_line(report: ProgressReport) -> str:
    """The line a job prints (no newline)."""
    loss = f"{report.loss:.4f}" if report.loss is not None else "?"
    rate = f"{report.samples_per_second:.1f}" if report.samples_per_second is not None else "?"
    return (
        f"{PROGRESS_PREFIX} stage {report.stage} step {report.step}/{report.total_steps} ({report.percent:.1f}%) "
        f"loss {loss} | {rate} samples/s | elapsed {format_duration(report.elapsed_seconds)} | "
        f"ETA {format_duration(report.eta_seconds)}"
    )


_LINE = re.compile(
    re.escape(PROGRESS_PREFIX)
    + r" stage (?P<stage>\S+) step (?P<step>\d+)/(?P<total>\d+) \([\d.]+%\) loss (?P<loss>\S+) \| "
    r"(?P<rate>\S+) samples/s \| elapsed (?P<elapsed>\S+) \| ETA (?P<eta>\S+)"
)


def parse_progress_line(line: str) -> ProgressReport | None:
    """The report in a progress line (anywhere in ``line``: a scheduler may prefix a rank or time), or
    None for any other line."""
    match = _LINE.search(line)
    if match is None:
        return None
    loss, rate = match["loss"], match["rate"]
    return ProgressReport(
        stage=match["stage"],
        step=int(match["step"]),
        total_steps=int(match["total"]),
        loss=None if loss == "?" else float(loss),
        samples_per_second=None if rate == "?" else float(rate),
        elapsed_seconds=parse_duration(match["elapsed"]) or 0.0,
        eta_seconds=parse_duration(match["eta"]),
    )


class ProgressPrinter:
    """Decides when a step deserves a progress line and prints it (rank 0 only; a no-op elsewhere)."""

    def __init__(
        self,
        stage: str,
        total_steps: int,
        start_step: int,
        interval_seconds: float,
        enabled: bool = True,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.total_steps = total_steps
        self.start_step = start_step
        self.interval_seconds = interval_seconds
        self.enabled = enabled
        self._emit = emit or (lambda line: print(line, flush=True))
        self._clock = clock
        self._started = clock()
        self._last_printed: float | None = None
        self.lines_printed = 0

    def report(self, step: int, loss: float | None, samples_per_second: float | None) -> ProgressReport:
        """Where the stage stands after ``step``."""
        elapsed = self._clock() - self._started
        done_here = step - self.start_step
        eta = elapsed / done_here * (self.total_steps - step) if done_here > 0 else None
        return ProgressReport(stage=self.stage, step=step, total_steps=self.total_steps, loss=loss,
                              samples_per_second=samples_per_second, elapsed_seconds=elapsed, eta_seconds=eta)

    def step_done(self, step: int, loss: float | None, samples_per_second: float | None) -> bool:
        """Print a line for ``step`` if it is the first of this attempt, the last of the stage, or
        ``interval_seconds`` passed since the last line; returns whether it printed."""
        if not self.enabled:
            return False
        now = self._clock()
        due = (
            self._last_printed is None
            or step >= self.total_steps
            or now - self._last_printed >= self.interval_seconds
        )
        if not due:
            return False
        self._emit(format_progress_line(self.report(step, loss, samples_per_second)))
        self._last_printed = now
        self.lines_printed += 1
        return True


__all__ = [
    "PROGRESS_PREFIX",
    "ProgressPrinter",
    "ProgressReport",
    "format_duration",
    "format_progress_line",
    "parse_duration",
    "parse_progress_line",
]
