"""Atomic publication (tasks.publish): two producers of one output both finish with the same verified
result, a reader never sees half an output, and a dead producer's private folder does not stay behind."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from tasks.publish import atomic_write_text, host_name, private_path, produce_once, remove_dead_private_dirs


def _complete(directory: Path) -> bool:
    return (directory / "done").exists() and (directory / "payload").read_text() == "x" * 1000


def _leftovers(parent: Path, final: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != final)


def test_two_producers_of_one_output_at_once_both_end_with_the_same_verified_result(tmp_path):
    final = tmp_path / "out"
    both_writing = threading.Barrier(2, timeout=10)
    outcomes: dict[int, bool | BaseException] = {}

    def produce(private: Path) -> None:
        (private / "payload").write_text("x" * 1000)
        both_writing.wait()  # neither has published yet: the old code collided exactly here
        (private / "done").write_text("")

    def run(index: int) -> None:
        try:
            outcomes[index] = produce_once(final, produce, _complete)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(outcomes.values()) == [False, True], outcomes  # one published, the other reused it
    assert _complete(final)
    assert _leftovers(tmp_path, final) == []  # neither private folder stays behind
    # a later run finds it published and produces nothing
    assert produce_once(final, lambda private: (_ for _ in ()).throw(AssertionError("produced again")), _complete) is False


def test_a_failed_producer_publishes_nothing_and_leaves_nothing(tmp_path):
    final = tmp_path / "out"

    def fail(private: Path) -> None:
        (private / "payload").write_text("half")
        raise OSError("disk full")

    try:
        produce_once(final, fail, _complete)
    except OSError:
        pass
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_an_unverified_leftover_of_an_older_writer_is_replaced(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "payload").write_text("truncated")
    assert produce_once(final, lambda p: ((p / "payload").write_text("x" * 1000), (p / "done").write_text("")), _complete)
    assert _complete(final) and _leftovers(tmp_path, final) == []


def test_private_folders_of_dead_producers_are_removed_and_live_ones_kept(tmp_path):
    final = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    dead_dir = tmp_path / f".out.tmp-{host_name()}-{dead_pid}-0123abcd"
    live_dir = private_path(final)  # this process: alive
    other_host = tmp_path / f".out.tmp-otherhost-{dead_pid}-0123abcd"  # cannot be judged from here
    for directory in (dead_dir, live_dir, other_host):
        directory.mkdir()
    assert remove_dead_private_dirs(final) == [dead_dir]
    assert live_dir.exists() and other_host.exists() and not dead_dir.exists()


def test_concurrent_atomic_writes_of_one_file_never_fail_or_interleave(tmp_path):
    path = tmp_path / "report.json"
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(200):
                atomic_write_text(path, text)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=write, args=(letter * 5000,)) for letter in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert path.read_text() in ("a" * 5000, "b" * 5000)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
