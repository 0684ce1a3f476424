"""Parameter files for pydantic models: strict reading, readable errors, dotted overrides, commented YAML.

The retrain's configuration file (``flows/recipes.py``) is validated by the very models the flows take
as parameters; this module adds what a file written by hand needs on top of pydantic:

- ``unknown_fields``: a key the model does not have is an error naming the field, what the model has
  and the nearest spelling ("caption_qualty ... did you mean caption_quality?"), never silently
  ignored (pydantic ignores extra keys by default, so a typo would fall back to a default);
- ``describe_validation_error``: one line per problem, ``path.to.field: message (got ...)``; pydantic
  names the allowed values of a ``Literal`` itself ("Input should be 'local', 'slurm' or 'k8s'");
- ``set_dotted``: ``training.stage_overrides.3.max_steps=5``-style changes (``--set`` on the CLI);
- ``commented_yaml``: a model instance as YAML with each field's docstring above it, so a printed
  configuration documents every setting it contains.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ParameterFileError(ValueError):
    """A parameter file (or an override) that does not validate; the message has one line per problem."""


# ------------------------------------------------------------------------------------------ reading


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation admits (through Optional/Union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    return []


def _container_item(annotation: Any, data: Any) -> tuple[str, Any] | None:
    """``("list", item annotation)`` / ``("dict", value annotation)`` when the annotation (or one arm of
    its union) is a container matching ``data``'s shape."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    for candidate in candidates:
        origin, args = typing.get_origin(candidate), typing.get_args(candidate)
        if origin in (list, tuple, set, frozenset) and isinstance(data, list) and args:
            return "list", args[0]
        if origin is dict and isinstance(data, dict) and len(args) == 2:
            return "dict", args[1]
    return None


def _accepted_keys(model: type[BaseModel]) -> dict[str, str]:
    """Every key the model reads -> its field name (aliases and validation aliases included)."""
    keys = {}
    for name, field in model.model_fields.items():
        keys[name] = name
        for alias in (field.alias, field.validation_alias):
            choices = getattr(alias, "choices", None)
            for choice in choices or ([alias] if isinstance(alias, str) else []):
                if isinstance(choice, str):
                    keys[choice] = name
    return keys


def unknown_fields(annotation: Any, data: Any, path: str = "") -> list[str]:
    """Problems for every key of ``data`` that the model (or nested model) of ``annotation`` does not
    have, each naming its place, the fields that exist and the nearest spelling."""
    models = _models_in(annotation)
    if models and isinstance(data, dict):
        model = models[0]
        if model.model_config.get("extra") == "allow":
            return []
        accepted = _accepted_keys(model)
        problems = []
        for key, value in data.items():
            where = f"{path}{key}"
            if key not in accepted:
                close = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                problems.append(f"{where}: unknown field; {hint}{model.__name__} has: {', '.join(model.model_fields)}")
                continue
            problems += unknown_fields(model.model_fields[accepted[key]].annotation, value, f"{where}.")
        return problems
    container = _container_item(annotation, data)
    if container is None:
        return []
    kind, item = container
    items = enumerate(data) if kind == "list" else data.items()
    return [problem for key, value in items for problem in unknown_fields(item, value, f"{path}{key}.")]


def describe_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error: ``path.to.field: message (got value)``."""
    lines = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        got = ""
        if item["type"] not in ("missing", "value_error") and not isinstance(given, (dict, list)):
            shown = json.dumps(given, default=str)
            got = f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        where = f"{prefix}{location}" if location else prefix.rstrip(".") or "(top level)"
        lines.append(f"{where}: {message}{got}")
    return lines


def validate_document(model: type[BaseModel], document: Any, origin: str) -> BaseModel:
    """``model`` from a parsed document, refusing unknown keys; ``ParameterFileError`` lists every problem."""
    if not isinstance(document, dict):
        raise ParameterFileError(f"{origin}: expected a mapping of {model.__name__} fields, got {type(document).__name__}")
    problems = unknown_fields(model, document)
    reported = {problem.partition(": ")[0] for problem in problems}
    try:
        validated = model.model_validate(document)
    except ValidationError as error:
        # pydantic's own "extra inputs are not permitted" repeats an unknown key already named above
        problems += [line for line in describe_validation_error(error) if line.partition(": ")[0] not in reported]
        validated = None
    if problems:
        raise ParameterFileError(f"{origin}: " + ("\n  ".join(["invalid parameters:", *problems]) if len(problems) > 1
                                                    else problems[0]))
    return validated


# ------------------------------------------------------------------------------------- documents


def is_profiled(instance: Any) -> bool:
    """A model whose ``profile`` fills every threshold not given (``CaptionGateThresholds``): written
    as its profile plus what it overrides, so that changing the profile changes the thresholds."""
    return isinstance(instance, BaseModel) and "profile" in type(instance).model_fields and callable(
        getattr(instance, "overrides", None))


def document_of(instance: BaseModel) -> dict[str, Any]:
    """``instance`` as a JSON-compatible document that validates back to it, like ``model_dump(mode=
    "json")`` except that a profiled model (``is_profiled``) keeps only its profile and overrides:
    a file or ``--set`` that changes the profile then gets the new profile's thresholds, not the old
    ones written out."""
    dumped = instance.model_dump(mode="json")
    if is_profiled(instance):
        return {"profile": dumped["profile"], **{name: value for name, (value, _) in instance.overrides().items()}}
    for name in type(instance).model_fields:
        value = getattr(instance, name)
        if name not in dumped:
            continue
        if isinstance(value, BaseModel):
            dumped[name] = document_of(value)
        elif isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
            dumped[name] = [document_of(item) if isinstance(item, BaseModel) else item for item in value]
        elif isinstance(value, dict) and any(isinstance(item, BaseModel) for item in value.values()):
            dumped[name] = {key: document_of(item) if isinstance(item, BaseModel) else dumped[name][key]
                            for key, item in zip(dumped[name], value.values())}
    return dumped


# ---------------------------------------------------------------------------------------- overrides


def parse_assignment(text: str) -> tuple[str, Any]:
    """``("a.b.c", value)`` from ``a.b.c=VALUE``; the value is read as YAML (``5``, ``0.1``, ``null``,
    ``[a, b]``, ``short-labels``)."""
    path, separator, raw = text.partition("=")
    if not separator or not path.strip():
        raise ParameterFileError(f"--set expects PATH=VALUE (e.g. caption_quality.profile=short-labels), got {text!r}")
    return path.strip(), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(document: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted path of a nested dict/list document (list items by index; missing
    mappings are created). Raises ``ParameterFileError`` naming the part that does not fit."""
    parts = path.split(".")
    node: Any = document
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, parts[: depth + 1])
        elif isinstance(node, dict):
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        else:
            raise ParameterFileError(f"{'.'.join(parts[:depth])}: is a value, so {path} cannot be set")
    last = parts[-1]
    if isinstance(node, list):
        index = _list_index(node, last, parts)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ParameterFileError(f"{'.'.join(parts[:-1])}: is a value, so {path} cannot be set")


def _list_index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ParameterFileError(f"{'.'.join(parts)}: a list of {len(node)} item(s); use an index 0..{len(node) - 1}")
    return int(part)


def _list_item(node: list, part: str, parts: list[str]) -> Any:
    return node[_list_index(node, part, parts)]


# ------------------------------------------------------------------------------------------ writing


@functools.cache
def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (base classes included)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in zip(body, body[1:]):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[statement.target.id] = inspect.cleandoc(following.value.value)
    for name, field in model.model_fields.items():
        if field.description and name not in docs:
            docs[name] = field.description
    return docs


_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!etc)\.\s+(?=[A-Z`(])")


def _first_sentence(doc: str, width: int = 200) -> list[str]:
    """The docstring's first sentence, as comment lines of at most 100 characters (``width`` in all)."""
    text = " ".join(doc.split())
    end = _SENTENCE_END.search(text)
    if end:
        text = text[: end.start() + 1]
    if len(text) > width:
        text = text[: width - 3].rstrip() + "..."
    return textwrap.wrap(text, 100)


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip().removesuffix("\n...").strip()


def commented_yaml(instance: BaseModel, indent: int = 0, only_set: bool = False) -> list[str]:
    """The model's fields as YAML lines, each preceded by the first sentence of its docstring
    (``only_set``: leave out fields that are None, as in a mapping of overrides)."""
    docs = field_docs(type(instance))
    dumped = instance.model_dump(mode="json")
    lines: list[str] = []
    pad = " " * indent
    overridden = instance.overrides() if is_profiled(instance) else None
    for name, field in type(instance).model_fields.items():
        if field.exclude or (only_set and getattr(instance, name) is None):
            continue
        if overridden is not None and name != "profile" and name not in overridden:
            continue
        lines += [f"{pad}# {line}" for line in _first_sentence(docs.get(name, ""))]
        lines += _yaml_value(name, getattr(instance, name), dumped[name], indent)
    if overridden is not None:
        rest = [name for name in type(instance).model_fields if name != "profile" and name not in overridden]
        lines.append(f"{pad}# The profile's other thresholds, as in force now (set one here to override it):")
        lines += [f"{pad}#   {name}: {_scalar(dumped[name])}" for name in rest]
    return lines


def _yaml_value(key: str, value: Any, dumped: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, BaseModel):
        return [f"{pad}{key}:", *commented_yaml(value, indent + 2)]
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        # A mapping of models holds overrides (per stage): only what each one sets is shown.
        lines = [f"{pad}{key}:"]
        for item, dumped_key in zip(value.values(), dumped):
            lines += [f"{pad}  {_scalar(str(dumped_key))}:", *(commented_yaml(item, indent + 4, only_set=True)
                                                             or [f"{pad}    {{}}"])]
        return lines
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        lines = [f"{pad}{key}:"]
        for item in value:
            item_lines = commented_yaml(item, indent + 4)
            first = next(i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#"))
            item_lines[first] = f"{pad}  - {item_lines[first][indent + 4:]}"
            lines += item_lines
        return lines
    if isinstance(dumped, (dict, list)) and dumped:
        block = yaml.safe_dump(dumped, default_flow_style=False, sort_keys=False, allow_unicode=True, width=10_000)
        return [f"{pad}{key}:", *(f"{pad}  {line}" for line in block.rstrip("\n").splitlines())]
    return [f"{pad}{key}: {_scalar(dumped)}"]


__all__ = [
    "ParameterFileError",
    "commented_yaml",
    "document_of",
    "is_profiled",
    "describe_validation_error",
    "field_docs",
    "parse_assignment",
    "set_dotted",
    "unknown_fields",
    "validate_document",
]
