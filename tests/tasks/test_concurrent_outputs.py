"""Two runs producing the same content-addressed output at once (the failure of two `eve demo` runs on
one home): the ingest staging folder and the caption gate's derived dataset. Both end with the same
verified result, neither fails, and no private or partial folder is left behind."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

from eve_model.shards import verify_dataset


def _at_once(function, *args) -> list:
    """Run ``function(*args)`` in two threads started together; their results (or errors)."""
    results: list = [None, None]
    start = threading.Barrier(2, timeout=30)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = function(*args)
        except BaseException as error:  # noqa: BLE001 - asserted by the caller
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def _in_two_processes_at_once(function, *args) -> list:
    """Like ``_at_once`` in two forked processes (separate runs are separate processes; GX's
    ephemeral contexts share process-global state, so two gates in one process's threads clash)."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2, timeout=60)
    results = context.Queue()

    def run(index: int) -> None:
        start.wait()
        try:
            results.put((index, function(*args)))
        except BaseException as error:  # noqa: BLE001 - asserted by the caller
            results.put((index, RuntimeError(repr(error))))

    processes = [context.Process(target=run, args=(index,)) for index in range(2)]
    for process in processes:
        process.start()
    collected = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(30)
    return [collected[0], collected[1]]


def _hidden_or_partial(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".partial") or ".staging" in p.name]


def test_two_ingests_of_the_same_sources_at_once_share_one_staged_dataset(eve_home, tmp_path):
    from tasks.data.demo_source import DemoDataConfig, demo_sources, generate_demo_data
    from tasks.data.steps import ingest_sources
    from tasks.data.validate import ValidationConfig

    sources = demo_sources(generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())).captions
    # The final progress call comes after the shards and before the report: a pause there lets the
    # other ingest reach the same folder while this one is between the two (where the old code lost).
    first, second = _at_once(ingest_sources, sources, ValidationConfig.demo(), 8, lambda *counts: time.sleep(0.5))
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException), (first, second)
    assert first.dataset_hash == second.dataset_hash and first.dataset_dir == second.dataset_dir
    assert verify_dataset(first.dataset_dir).dataset_hash == first.dataset_hash
    assert Path(first.quarantine_path).parent == Path(first.dataset_dir)
    assert [p.name for p in (eve_home / "staging").iterdir()] == [Path(first.dataset_dir).name]
    assert _hidden_or_partial(eve_home) == []


def test_two_caption_gates_on_one_version_at_once_publish_one_output(eve_home, tmp_path):
    from tasks.quality.gate import gate_caption_dataset
    from tests.tasks.quality.test_gate import planted_dataset

    source, _ = planted_dataset(tmp_path / "captioned")
    output = tmp_path / "filtered"
    first, second = _in_two_processes_at_once(gate_caption_dataset, source, output)
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException), (first, second)
    assert first.passed and second.passed
    assert first.output_dataset_hash == second.output_dataset_hash == verify_dataset(output).dataset_hash
    assert sorted(p.name for p in tmp_path.iterdir() if p != eve_home) == ["captioned", "filtered"]
    assert _hidden_or_partial(tmp_path) == [] and _hidden_or_partial(eve_home) == []
