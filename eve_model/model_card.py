"""The model card (``README.md``, huggingface_hub's ``ModelCard``) of a checkpoint directory.

Several writers fill one card, each its own sections, in any order and any number of times:

- the training job (``training.stage_model.EveStageModel.save_final``): model, training data (dataset
  hashes), training procedure (stage config), training metrics;
- ``eve convert upstream``: the source files and their checksums, the name mapping;
- the registry and the promotion (later): evaluation with baselines, approval.

``write_model_card(directory, sections, metadata)`` creates the card or updates it: a section given again
replaces its earlier text, sections not given are kept, YAML metadata is merged key by key. Sections are
``## <title>`` blocks; known titles keep a fixed order (``SECTION_ORDER``), others follow in the order they
were first written. The card is outside the weights hash (``eve_model.identity``): describing a model never
changes its identity.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MODEL_CARD_FILE = "README.md"

SECTION_ORDER: tuple[str, ...] = (
    "Model",
    "Intended use",
    "Training data",
    "Training procedure",
    "Training metrics",
    "Source",
    "Evaluation",
    "Limitations",
    "Approval",
)
"""Where the known sections go, top to bottom; any other section is appended after them."""

_SECTION_HEADING = re.compile(r"^## (.+?)\s*$", re.MULTILINE)


def _split_sections(body: str) -> tuple[str, dict[str, str]]:
    """The card text before the first ``## `` heading (title line and intro) and the sections by title."""
    matches = list(_SECTION_HEADING.finditer(body))
    if not matches:
        return body.strip(), {}
    preamble = body[: matches[0].start()].strip()
    sections: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(body)
        sections[match.group(1)] = body[match.end() : end].strip()
    return preamble, sections


def read_model_card_sections(directory: str | Path) -> dict[str, str]:
    """The sections of ``directory``'s card by title ({} when it has none)."""
    from huggingface_hub import ModelCard

    path = Path(directory) / MODEL_CARD_FILE
    if not path.exists():
        return {}
    return _split_sections(ModelCard(path.read_text(encoding="utf-8")).text)[1]


def write_model_card(
    directory: str | Path,
    sections: dict[str, str],
    metadata: dict[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Create or update ``directory/README.md``: replace or add ``sections`` (title -> markdown body), merge
    ``metadata`` into the YAML header (a value of None removes the key), set the ``# title`` line if given.
    Returns the card's path."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(directory) / MODEL_CARD_FILE
    if path.exists():
        card = ModelCard(path.read_text(encoding="utf-8"))
        data = card.data.to_dict()
        preamble, existing = _split_sections(card.text)
    else:
        data, preamble, existing = {}, "", {}
    for key, value in (metadata or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    merged = {**existing, **{name: text.strip() for name, text in sections.items()}}
    ordered = [name for name in SECTION_ORDER if name in merged] + [name for name in merged if name not in SECTION_ORDER]
    if title is not None or not preamble:
        preamble = f"# {title or Path(directory).resolve().name}"
    body = preamble + "\n\n" + "\n\n".join(f"## {name}\n\n{merged[name]}" for name in ordered) + "\n"
    header = ModelCardData(**data).to_yaml() if data else ""
    content = f"---\n{header}\n---\n\n{body}" if header else body
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelCard(content).save(str(path))
    return path


def markdown_table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("field", "value")) -> str:
    """A two-column markdown table; values are shown as inline code (dicts and lists as compact JSON)."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    for name, value in rows:
        shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
        shown = str(shown).replace("|", "\\|")
        lines.append(f"| {name} | `{shown}` |")
    return "\n".join(lines)


__all__ = ["MODEL_CARD_FILE", "SECTION_ORDER", "markdown_table", "read_model_card_sections", "write_model_card"]
