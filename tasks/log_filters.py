"""What stays out of the platform's logs: library chatter and progress-bar redraws.

Two places produce lines nobody needs in a flow run's log:

- **libraries in the flow's own process** log hints for their own command line at INFO (DVC's
  "Initialized DVC repository." and "You can now commit the changes to git.", GX's temporary
  directories). ``quiet_library_chatter`` raises those loggers to WARNING, so their warnings and
  errors still show; the flows call it once per process.
- **a training job's log**, streamed into the stage task's log line by line: torchrun's
  ``OMP_NUM_THREADS`` banner and any progress bar a library draws (each ``\\r`` redraw arrives as a
  line). ``is_job_log_chatter`` tells them apart; they stay in the job's own log file under
  ``<stage folder>/logs/``, which keeps everything.
"""

from __future__ import annotations

import logging
import re

CHATTY_LIBRARY_LOGGERS: dict[str, int] = {
    "dvc": logging.WARNING,
    "great_expectations": logging.WARNING,
}
"""Logger name -> the lowest level that reaches the platform's logs."""

_JOB_LOG_CHATTER = (
    re.compile(r"^\s*\*{10,}\s*$"),  # torchrun's banner frame
    re.compile(r"Setting OMP_NUM_THREADS environment variable for each process"),
    # A progress bar redraw (tqdm and look-alikes): "  45%|████▌     | 45/100 [00:03<00:04, 12.1it/s]"
    re.compile(r"\d+%\|.*\|\s*\d+/\d+\s*\["),
)


SELF_LEVELLED_LOGGERS: tuple[str, ...] = ("great_expectations.data_context.types.base",)
"""Loggers under ``CHATTY_LIBRARY_LOGGERS`` that their library sets to INFO itself when imported, which
overrides their parent's level whenever the import comes after ``quiet_library_chatter``."""


class _BelowLevelDropped(logging.Filter):
    """Drops records under ``level`` logged by the logger it is attached to (its own level notwithstanding)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_library_chatter() -> None:
    """Raise the chatty libraries' loggers to ``CHATTY_LIBRARY_LOGGERS`` and keep their hints out of the
    descendants that set a level of their own, now or when imported later (a filter outlasts a library's
    ``setLevel``); idempotent."""
    for name, level in CHATTY_LIBRARY_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)
        levelled = [
            child for child, existing in logging.root.manager.loggerDict.items()
            if child.startswith(name + ".") and isinstance(existing, logging.Logger) and existing.level
        ]
        for child in {*levelled, *(n for n in SELF_LEVELLED_LOGGERS if n.startswith(name + "."))}:
            descendant = logging.getLogger(child)
            if not any(isinstance(f, _BelowLevelDropped) for f in descendant.filters):
                descendant.addFilter(_BelowLevelDropped(level))


def is_job_log_chatter(line: str) -> bool:
    """A job log line that stays out of the stage task's log (it remains in the job's log file)."""
    return any(pattern.search(line) for pattern in _JOB_LOG_CHATTER)


__all__ = ["CHATTY_LIBRARY_LOGGERS", "SELF_LEVELLED_LOGGERS", "is_job_log_chatter", "quiet_library_chatter"]
