"""Jinja rendering of scheduler scripts where nothing reaches a shell unquoted.

The environment refuses to render any value that did not pass through a quoting filter: a
template that forgets ``| shquote`` fails at render time instead of producing an injectable
script. Integers (node counts, minutes) are the only values allowed bare.

Both environments give every template ``exit_code``: ``eve_model.exit_codes.ExitCode.template_values()``
(``{{ exit_code.REQUEUE }}``), the one definition of what a job's exit status means. Templates
carry no exit code of their own.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jinja2

from eve_model.exit_codes import ExitCode

INFRA_DIR = Path(__file__).resolve().parent.parent.parent / "infra"

_DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_.,:=@+\-/\[\]|&()!*]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ShellSafe(str):
    """A string that a quoting filter produced; the only kind of string a template may emit."""


class UnquotedValueError(ValueError):
    """A template tried to emit a value that no quoting filter vetted."""


def shquote(value: object) -> ShellSafe:
    """One shell word, whatever the value contains (spaces, quotes, ``$(...)``, newlines)."""
    return ShellSafe(shlex.quote(str(value)))


def shquote_words(values: list[object]) -> ShellSafe:
    """Several shell words, each quoted."""
    return ShellSafe(" ".join(shlex.quote(str(v)) for v in values))


def directive(value: object) -> ShellSafe:
    """A value for a ``#SBATCH`` line: sbatch parses these itself, so only a plain token is allowed."""
    text = str(value)
    if not _DIRECTIVE_VALUE.match(text):
        raise UnquotedValueError(f"{text!r} cannot be placed on an #SBATCH line")
    return ShellSafe(text)


def identifier(value: object) -> ShellSafe:
    """A shell variable name."""
    text = str(value)
    if not _IDENTIFIER.match(text):
        raise UnquotedValueError(f"{text!r} is not a shell identifier")
    return ShellSafe(text)


def _only_vetted(value: object) -> object:
    if isinstance(value, ShellSafe) or value is None:
        return "" if value is None else value
    if isinstance(value, bool):
        raise UnquotedValueError("booleans must be rendered through an explicit {% if %}")
    if isinstance(value, int):
        return value
    raise UnquotedValueError(f"unquoted value {value!r} in a shell template; use | shquote")


def _with_exit_codes(environment: jinja2.Environment) -> jinja2.Environment:
    environment.globals["exit_code"] = ExitCode.template_values()
    return environment


def shell_template_environment(directory: Path | list[Path]) -> jinja2.Environment:
    """Jinja environment for shell scripts under ``directory`` (or several, searched in order)
    with the quoting guard installed."""
    directories = directory if isinstance(directory, list) else [directory]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in directories]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_only_vetted,
    )
    environment.filters.update(
        shquote=shquote, shquote_words=shquote_words, directive=directive, identifier=identifier
    )
    return _with_exit_codes(environment)


def yaml_template_environment(directory: Path) -> jinja2.Environment:
    """Jinja environment for Kubernetes manifests: every value goes through ``| tojson`` (valid YAML)."""
    return _with_exit_codes(
        jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(directory)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
    )
