"""Exit codes of a training job, defined once.

The training entry point returns them, the submission backends interpret them, and the job
templates in ``infra/`` are rendered from this definition: ``tasks.submit.render`` hands
``ExitCode.template_values()`` to every template as ``exit_code`` (``{{ exit_code.REQUEUE }}``), so
the three never disagree and no template carries a number of its own.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a job's exit status means to the platform."""

    COMPLETED = 0
    """The stage is complete: ``<output_dir>/final`` holds the HF model."""

    FAILED = 1
    """An error during training; the log tail says which. Rerunning resumes from the last checkpoint."""

    CONFIG_ERROR = 2
    """The configuration or the preflight checks refused to start; nothing was computed, and running
    the same job again fails the same way."""

    REQUEUE = 75
    """``EX_TEMPFAIL`` (sysexits.h): a SIGTERM/SIGUSR1 arrived, a checkpoint was flushed at a step
    boundary, and running the same command again resumes from it ("requeue me")."""

    RANK_KILLED = 255
    """Set by the job supervisor (``infra/slurm/_supervise.sh.j2``): a rank was killed by a signal or
    reported no valid exit code, and no rank failed on its own. A failure, never a success."""

    @classmethod
    def template_values(cls) -> dict[str, int]:
        """``{"COMPLETED": 0, ...}`` for rendering job templates."""
        return {member.name: int(member) for member in cls}

    @classmethod
    def describe(cls, code: int | None) -> str:
        """A human-readable meaning for any exit status (signals as 128 + N)."""
        if code is None:
            return "no exit code"
        try:
            return f"{int(code)} ({cls(code).name.lower().replace('_', ' ')})"
        except ValueError:
            if code > 128:
                return f"{code} (killed by signal {code - 128})"
            return f"{code} (failure)"


__all__ = ["ExitCode"]
