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


def quiet_library_chatter() -> None:
    """Raise the chatty libraries' loggers to ``CHATTY_LIBRARY_LOGGERS`` (idempotent)."""
    for name, level in CHATTY_LIBRARY_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


def is_job_log_chatter(line: str) -> bool:
    """A job log line that stays out of the stage task's log (it remains in the job's log file)."""
    return any(pattern.search(line) for pattern in _JOB_LOG_CHATTER)


__all__ = ["CHATTY_LIBRARY_LOGGERS", "is_job_log_chatter", "quiet_library_chatter"]
