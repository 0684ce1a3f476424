"""Exclusive locks that name their holder, wait with a timeout, and survive a holder that died.

Used for work that must not run twice at once on one output (a training stage: two jobs writing
DeepSpeed checkpoints into one folder would corrupt both). The lock is an ``flock`` on a file:

- the kernel releases it when the holding process dies (kill -9 included), so a dead holder never
  blocks anyone; on a shared filesystem (NFSv4, Lustre with ``flock``) the server does the same
  when the holder's node goes away;
- the holder writes who it is into the file (host, pid, Prefect flow run, purpose, since when) and
  empties it on a clean release. A waiter therefore says exactly whom it waits for, and the next
  holder that finds a record left behind knows the previous holder died mid-way (``previous``), so
  it can resume that holder's partial work instead of starting again;
- waiting is bounded: ``LockTimeout`` names the holder and how long it has held the lock.

The lock file is never deleted (deleting a lock file lets two processes lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from tasks.publish import host_name, process_alive


class LockHolder(BaseModel):
    """Who holds (or held) a lock."""

    host: str
    """Host name of the holding process."""

    pid: int
    """Its process id on that host."""

    flow_run_id: str | None = None
    """The Prefect flow run it belongs to, when it runs inside one."""

    purpose: str = ""
    """What it does under the lock, in words (e.g. ``train stage 2 (key 1a2b...)``)."""

    acquired_at_unix: float = 0.0
    """When it took the lock."""

    def alive(self) -> bool | None:
        """Whether the holder still runs: known only on its own host (None elsewhere)."""
        return process_alive(self.pid) if self.host == host_name() else None

    def describe(self) -> str:
        held = time.time() - self.acquired_at_unix
        state = {True: "running", False: "dead", None: "state unknown from this host"}[self.alive()]
        run = f", flow run {self.flow_run_id}" if self.flow_run_id else ""
        return f"pid {self.pid} on {self.host}{run} ({state}), {self.purpose or 'no purpose given'}, held {held:.0f} s"


class LockTimeout(TimeoutError):
    """The lock stayed held longer than the waiter's timeout; the message names the holder."""


def current_flow_run_id() -> str | None:
    """The Prefect flow run this code runs in, if any (imported lazily: plain scripts need no Prefect)."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        return str(context.flow_run.id) if context and context.flow_run else None
    except Exception:  # noqa: BLE001 - identity is descriptive only
        return None


def read_holder(lock_path: Path) -> LockHolder | None:
    """The record in a lock file: the current holder, or one that died; None when empty."""
    try:
        text = Path(lock_path).read_text(encoding="utf-8").strip()
        return LockHolder.model_validate(json.loads(text)) if text else None
    except (OSError, ValueError):
        return None


@contextmanager
def exclusive(
    lock_path: Path,
    purpose: str,
    timeout_seconds: float,
    poll_seconds: float = 1.0,
    on_wait: Callable[[str], None] | None = None,
    wait_message_every_seconds: float = 60.0,
) -> Iterator[LockHolder | None]:
    """Hold ``lock_path`` exclusively for the ``with`` block; yields the previous holder's record
    when that holder died while holding it (its partial work is there to resume), else None.

    Waits at most ``timeout_seconds`` (``LockTimeout``); ``on_wait`` hears whom it waits for, at
    first and every ``wait_message_every_seconds``."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the block
    try:
        deadline = time.monotonic() + timeout_seconds
        next_message = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(lock_path)
                who = holder.describe() if holder else "a holder that has not written its record yet"
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{purpose}: gave up after {timeout_seconds:.0f} s waiting for {lock_path}, held by {who}"
                    ) from None
                if on_wait is not None and time.monotonic() >= next_message:
                    on_wait(f"{purpose}: waiting for {who} to finish (lock {lock_path})\n")
                    next_message = time.monotonic() + wait_message_every_seconds
                time.sleep(poll_seconds)
        previous = read_holder(lock_path)  # a record left behind: its holder died without releasing
        me = LockHolder(host=host_name(), pid=os.getpid(), flow_run_id=current_flow_run_id(), purpose=purpose,
                        acquired_at_unix=time.time())
        handle.seek(0)
        handle.truncate()
        handle.write(me.model_dump_json())
        handle.flush()
        os.fsync(handle.fileno())
        try:
            yield previous
        finally:
            handle.seek(0)
            handle.truncate()  # a clean release leaves an empty record
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def running_local_jobs(log_dir: Path) -> list[int]:
    """Supervisor pids of local-backend jobs under ``log_dir`` that still run (a pid file, no exit
    marker, the process alive). A holder killed with kill -9 leaves its job running: the job is in
    its own session (``tasks.submit.local``), so it goes on writing into the folder."""
    from tasks.submit.base import read_exit_marker

    running = []
    for pid_file in sorted(Path(log_dir).glob("local-*.pid")):
        job_id = pid_file.name.removesuffix(".pid")
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if read_exit_marker(Path(log_dir), job_id) is None and process_alive(pid):
            running.append(pid)
    return running


def wait_for_orphaned_jobs(log_dir: Path, purpose: str, timeout_seconds: float, poll_seconds: float = 1.0,
                           on_wait: Callable[[str], None] | None = None) -> None:
    """Wait until no job that a dead holder started under ``log_dir`` still runs (``running_local_jobs``),
    so the next job never writes into the same folder at the same time; ``LockTimeout`` after ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    told = False
    while pids := running_local_jobs(log_dir):
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{purpose}: the job(s) {pids} of a holder that died still run after {timeout_seconds:.0f} s")
        if on_wait is not None and not told:
            on_wait(f"{purpose}: the job(s) {pids} of a holder that died still run; waiting for them to end\n")
            told = True
        time.sleep(poll_seconds)


WORK_FOLDER_LOCK_NAME = ".lock"


@contextmanager
def work_folder_lock(folder: Path, purpose: str, timeout_seconds: float,
                     on_log: Callable[[str], None] | None = None, poll_seconds: float = 1.0) -> Iterator[LockHolder | None]:
    """One writer at a time for a work folder (a stage's checkpoints, logs and ``final/``).

    The lock file is ``<folder>/.lock``. When the previous holder died holding it, the jobs it
    started under ``<folder>/logs`` are waited for (they go on writing after a kill -9 of the
    holder), and the caller continues from what they left: the stage resumes from its checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with exclusive(folder / WORK_FOLDER_LOCK_NAME, purpose, timeout_seconds, poll_seconds, on_wait=on_log) as previous:
        if previous is not None:
            if on_log is not None:
                on_log(f"{purpose}: the previous holder ({previous.describe()}) died before finishing; "
                       "resuming its partial work\n")
            left = max(timeout_seconds - (time.monotonic() - started), 0.0)
            wait_for_orphaned_jobs(folder / "logs", purpose, left, poll_seconds, on_wait=on_log)
        yield previous


__all__ = ["LockHolder", "LockTimeout", "current_flow_run_id", "exclusive", "read_holder", "running_local_jobs", "wait_for_orphaned_jobs", "work_folder_lock"]
