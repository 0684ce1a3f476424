"""Pre-emption handling: SIGTERM / SIGUSR1 flush a checkpoint, then the job exits ``ExitCode.REQUEUE``.

``ExitCode.REQUEUE`` (75, ``EX_TEMPFAIL`` in sysexits.h) means "requeue me": the job stopped cleanly
at a step boundary with a complete checkpoint, and running the same command again resumes from it.
Schedulers send SIGTERM before killing a job (SLURM on ``scancel``/pre-emption/time limit,
Kubernetes on pod eviction); SLURM's ``--signal=USR1@120`` gives an earlier warning.

The handler only sets a flag; the training loop checks it after each optimizer step, and the ranks
agree on it with an all-reduce, so every rank writes its shard of the same checkpoint even when
only one rank received the signal.
"""

from __future__ import annotations

import signal
from types import FrameType

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatcher:
    """Records that a pre-emption signal arrived; ``install()`` once per process, on the main thread."""

    def __init__(self) -> None:
        self.received_signal: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received_signal = signum

    def install(self) -> "PreemptionWatcher":
        for sig in HANDLED_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.received_signal is not None

    def agreed_across_ranks(self, extra_flags: tuple[bool, ...] = ()):
        """True on every rank if any rank was signalled (a collective: call it on all ranks).

        ``extra_flags``: more per-rank booleans agreed in the same all-reduce (any rank true makes
        them true everywhere); then returns ``(signalled, *flags)``.
        """
        import torch
        import torch.distributed as dist

        flags = torch.tensor([1 if self.requested else 0, *(1 if flag else 0 for flag in extra_flags)], dtype=torch.int32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flags = flags.cuda()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        agreed = [bool(value) for value in flags.tolist()]
        return tuple(agreed) if extra_flags else agreed[0]


__all__ = ["HANDLED_SIGNALS", "PreemptionWatcher"]
