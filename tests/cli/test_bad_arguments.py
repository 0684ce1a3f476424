"""Every ``eve`` subcommand given bad arguments: a clear message and a non-zero exit, never a traceback.

The walk finds the subcommands in the parser itself, so a new one is walked too: each gets an unknown
option and, when it has required arguments, none at all; and each must have an entry in ``BAD_VALUES``
(arguments of the right shape whose values are wrong), so adding a command without deciding what its bad
input looks like fails here. The Prefect server is an unreachable address: no case may start one or run a
flow."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys

import pytest

from cli.main import build_parser, main
from tests.fixtures.prefect_server import REPO_ROOT

UNREACHABLE_API = "http://127.0.0.1:9/api"  # the discard port: nothing answers

# command -> [(argv after the command, expected exit code, a fragment the message must contain)]
BAD_VALUES: dict[str, list[tuple[list[str], int, str]]] = {
    "demo": [(["now"], 2, "unrecognized arguments: now")],
    "server start": [(["8080"], 2, "unrecognized arguments")],
    "server stop": [(["--all"], 2, "unrecognized arguments")],
    "server restart": [([], 1, "no local Prefect server of this platform home to restart")],
    "server status": [([], 1, "no local Prefect server is running")],
    "data demo": [(["--embedder", "clip"], 2, "invalid choice: 'clip'")],
    "data ingest": [(["--location", "/nonexistent/raw", "--name", "x"], 2, "source /nonexistent/raw: no such file or folder"),
                    (["--location", "/tmp", "--name", "x", "--kind", "zip"], 2, "invalid choice: 'zip'")],
    "data versions": [(["laion"], 2, "unrecognized arguments: laion")],
    "data pull": [(["zzzz9999", "/tmp/eve-walk-dest"], 1, "no dataset version 'zzzz9999'")],
    "quality check": [(["zzzz9999"], 2, "no dataset version 'zzzz9999'"),
                      (["/tmp", "--set", "bogus=1"], 2, "unknown threshold(s) ['bogus']"),
                      (["/tmp", "--profile", "tweets"], 2, "invalid choice: 'tweets'")],
    "quality profiles": [(["captions"], 2, "unrecognized arguments")],
    "train": [(["/nonexistent/stage.json"], 2, "stage config /nonexistent/stage.json does not exist"),
              (["preset", "--stage", "9"], 2, "unknown stage '9'"),
              (["preset", "--stage", "1", "--preset", "huge"], 2, "unknown preset 'huge'"),
              (["/nonexistent/stage.json", "--nproc", "two"], 2, "invalid int value: 'two'")],
    "retrain": [(["--recipe", "nope"], 2, "unknown recipe 'nope'"),
                (["--config", "/nonexistent/retrain.yaml"], 2, "No such file or directory"),
                (["--recipe", "demo", "--dry-run", "--set", "bogus.field=1"], 2, "bogus: unknown field")],
    "serve": [(["/nonexistent/model"], 2, "/nonexistent/model is not a model directory")],
    "cluster up": [(["--nodes", "many"], 2, "invalid int value: 'many'")],
    "cluster down": [(["now"], 2, "unrecognized arguments")],
    "cluster status": [(["now"], 2, "unrecognized arguments")],
    "evaluate": [(["/nonexistent/model", "--suite", "vqa=/x.jsonl"], 2, "model directory not found"),
                 (["/tmp", "--batch-size", "big"], 2, "invalid int value: 'big'")],
    "promote pending": [([], 1, "does not answer /health")],
    "promote approve": [(["v0.1.0", "--comment", "  "], 2, "a comment is required"),
                        (["v0.1.0", "--comment", "ok"], 1, "does not answer /health")],
    "promote reject": [(["v0.1.0", "--comment", ""], 2, "a comment is required")],
    "promote request": [(["v9.9.9"], 1, "eve@v9.9.9 is not registered")],
    "promote complete": [(["v9.9.9"], 1, "no promotion of v9.9.9 was requested")],
    "registry show": [(["v9.9.9"], 1, "eve@v9.9.9 is not registered")],
    "registry history": [(["v1"], 2, "unrecognized arguments")],
    "registry recover": [(["v1"], 2, "unrecognized arguments")],
    "lineage": [(["eve@v9.9.9"], 1, "no lineage for eve@v9.9.9"),
                (["--dataset", "zzzz"], 2, "at least 8 characters"),
                (["--dataset", "zzzzzzzzzzzz"], 1, "no registered model version used dataset zzzzzzzzzzzz"),
                (["eve@v9.9.9", "--dataset", "abcdefgh"], 2, "either a model version"),
                (["eve@v1", "--format", "gif"], 2, "invalid choice: 'gif'")],
    "audit verify": [(["now"], 2, "unrecognized arguments")],
    "audit show": [(["--last", "-1"], 2, "must be at least 1, not -1"), (["--last", "0"], 2, "must be at least 1"),
                   (["--last", "ten"], 2, "'ten' is not a whole number")],
    "audit repair": [(["now"], 2, "unrecognized arguments")],
    "users add": [(["bad/name"], 1, "account name 'bad/name'"), (["carol", "--kind", "robot"], 2, "invalid choice")],
    "users reset-password": [(["nobody"], 1, "no account 'nobody'")],
    "users remove": [(["nobody"], 1, "no account 'nobody'")],
    "users list": [(["all"], 2, "unrecognized arguments")],
    "policy show": [([], 1, "no approval policy")],
    "policy set": [(["--reviewers", ",", "--by", "ops"], 2, "allowed_reviewers: List should have at least 1 item"),
                   (["--reviewers", "bob", "--approvals", "0", "--by", "ops"], 2, "required_approvals"),
                   (["--reviewers", "bob", "--timeout-hours", "soon", "--by", "ops"], 2, "invalid float value")],
    "keys show": [(["platform"], 2, "unrecognized arguments")],
    "keys rotate": [(["signing"], 2, "invalid choice: 'signing'")],
    "convert upstream": [(["/nonexistent", "/tmp/eve-walk-converted"], 2, "not an upstream EVE model directory")],
    "deploy": [(["--config", "/nonexistent.yaml"], 2, "neither a recipe")],
    "reproduce": [(["eve@v9.9.9"], 2, "no lineage for eve@v9.9.9"),
                  (["v0.1.0", "--through", "everything"], 2, "invalid choice: 'everything'")],
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, its parser) for every runnable subcommand."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
        return
    for name, sub in groups[0].choices.items():
        yield from _leaves(sub, (*path, name))


LEAVES = {" ".join(path): parser for path, parser in _leaves(build_parser())}


def _required(parser: argparse.ArgumentParser) -> bool:
    return any(a.required or (not a.option_strings and a.nargs not in ("?", "*")) for a in parser._actions
               if a.dest != "help")


@pytest.fixture
def isolated(eve_home, monkeypatch, tmp_path):
    """A fresh platform home, keys and accounts; the Prefect API an address where nothing answers."""
    monkeypatch.setenv("PREFECT_API_URL", UNREACHABLE_API)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.setenv("EVE_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("EVE_AUTH_DIR", str(tmp_path / "auth"))
    monkeypatch.setenv("EVE_SLURM_BASE_DIR", str(tmp_path / "slurm"))
    monkeypatch.delenv("EVE_DEBUG", raising=False)
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    yield eve_home
    refresh_global_settings_context()


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return int(code or 0), out.getvalue() + err.getvalue()


def test_every_subcommand_has_bad_values_to_walk():
    assert sorted(LEAVES) == sorted(BAD_VALUES), "add the new subcommand's bad input to BAD_VALUES"


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_bad_arguments_get_a_message_and_a_nonzero_exit_never_a_traceback(command, isolated):
    words = command.split()
    # argparse names a missing required argument before an unknown option: either way, a usage line.
    cases = [([*words, "--no-such-option"], 2, "usage: eve")]
    if _required(LEAVES[command]):
        cases.append((words, 2, "required"))
    cases += [([*words, *argv], code, fragment) for argv, code, fragment in BAD_VALUES[command]]
    for argv, expected_code, fragment in cases:
        code, output = _run(argv)
        assert "Traceback" not in output, f"eve {' '.join(argv)}:\n{output}"
        assert code == expected_code and fragment in output, f"eve {' '.join(argv)} exited {code}:\n{output}"


def test_an_unexpected_failure_is_one_line_and_eve_debug_shows_the_traceback(isolated, monkeypatch):
    import cli.keys

    def broken(args):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(cli.keys, "_show", broken)
    code, output = _run(["keys", "show"])
    assert code == 1 and "Traceback" not in output
    assert "eve keys show: failed: RuntimeError: the disk went away" in output and "EVE_DEBUG=1" in output
    monkeypatch.setenv("EVE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the disk went away"):
        main(["keys", "show"])


def test_the_console_entry_point_prints_its_version_and_no_traceback(isolated):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    version = subprocess.run([sys.executable, "-m", "cli.main", "--version"], capture_output=True, text=True,
                             env=env, cwd=REPO_ROOT, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("eve 0.")
    assert "platform commit" in version.stdout and "model code trees:" in version.stdout
    bad = subprocess.run([sys.executable, "-m", "cli.main", "lineage", "--dataset", "zzzz"], capture_output=True,
                         text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "at least 8 characters" in bad.stderr
