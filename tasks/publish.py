"""Atomic publication of content-addressed outputs, so two runs producing the same output never collide.

The rule (docs/operations.md, "Concurrency"): an output named after its content key (a staged or
derived dataset, a gate result, a derived evaluation input) is produced in a private temporary
location next to its final place, unique to the producing process and call
(``.<name>.tmp-<host>-<pid>-<random>``), and published with one atomic ``rename``. So

- a reader sees either nothing or the complete output, never a half-written one;
- a run that finds the output already published and verified reuses it without producing anything;
- two runs producing the same output at once both finish: the first rename wins, the second finds
  the winner's output, verifies it, and discards its own copy (same key, same content);
- a producer killed mid-way leaves only its private folder; the next producer of the same output
  removes private folders whose process is dead (same host, pid gone), so nothing is left orphaned.

Folders left by an older, non-atomic writer that do not verify are moved aside and replaced.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

_PRIVATE_MARK = ".tmp-"
_PRIVATE_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[^/]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def host_name() -> str:
    """This host's name as it appears in private folder names and lock holders (no dashes inside)."""
    return socket.gethostname().replace("-", "_") or "localhost"


def private_path(final: Path) -> Path:
    """A fresh private sibling path of ``final`` for this process and call (not created)."""
    final = Path(final)
    return final.parent / f".{final.name}{_PRIVATE_MARK}{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_dead_private_dirs(final: Path) -> list[Path]:
    """Remove the private folders of ``final`` whose producer (a process on this host) has died.

    Folders of live processes and of other hosts are left alone (a producer on another node may
    still be writing). Returns what was removed."""
    final = Path(final)
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    this_host = host_name()
    for candidate in final.parent.iterdir():
        match = _PRIVATE_NAME.match(candidate.name)
        if not match or match["name"] != final.name or match["host"] != this_host:
            continue
        if process_alive(int(match["pid"])):
            continue
        _remove(candidate)
        removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _set_aside(final: Path) -> None:
    """Move ``final`` out of the way (to a private name, then delete it); a concurrent mover is fine."""
    aside = private_path(final)
    try:
        os.rename(final, aside)
    except FileNotFoundError:
        return
    _remove(aside)


def publish_dir(private: Path, final: Path, is_published: Callable[[Path], bool], replace: bool = False) -> bool:
    """Rename the finished ``private`` folder to ``final`` atomically.

    Returns True when this call's output was published, False when ``final`` already held a
    verified output (``is_published``) and ``private`` was discarded instead. ``replace`` publishes
    over an existing output (a newer result under the same key); a concurrent publisher of the same
    key then wins or loses as a whole, never half."""
    private, final = Path(private), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        try:
            os.rename(private, final)  # replaces only a missing or empty directory
            return True
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if not replace and is_published(final):
            _remove(private)
            return False
        _set_aside(final)
    raise RuntimeError(f"could not publish {final}: another writer kept replacing it")


def produce_once(final: Path, produce: Callable[[Path], None], is_published: Callable[[Path], bool]) -> bool:
    """Make sure ``final`` holds a verified output; produce it privately and publish it if not.

    ``produce(private)`` writes the complete output into ``private`` (an empty, existing folder).
    Returns True when this call produced and published the output, False when it reused one that
    was already published (before it started, or by a concurrent producer while it worked)."""
    final = Path(final)
    remove_dead_private_dirs(final)  # what killed producers left, whether or not this call produces
    if is_published(final):
        return False
    private = private_path(final)
    private.mkdir(parents=True)
    try:
        produce(private)
        return publish_dir(private, final, is_published)
    finally:
        _remove(private)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a file so readers see the old or the new content, never half; concurrent writers of the
    same path each use their own temporary file (a shared ``.tmp`` name would make one's rename fail)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = private_path(path)
    try:
        temporary.write_text(text, encoding=encoding)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


__all__ = [
    "atomic_write_text",
    "host_name",
    "private_path",
    "process_alive",
    "produce_once",
    "publish_dir",
    "remove_dead_private_dirs",
]
