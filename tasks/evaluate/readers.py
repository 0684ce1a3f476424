"""Readers for the benchmark formats users bring, all turned into one list of ``EvalItem``.

Formats (paths inside a file are relative to ``image_root``, default: the file's folder):

- demo / generic VQA JSONL: ``{"question_id", "image", "question", "answer" | "answers",
  "question_type"}``; ``answers`` may list several human answers (VQA soft accuracy).
- LLaVA question JSONL + answers JSONL: questions ``{"question_id", "image", "text", "category"?}``,
  answers ``{"question_id", "answer" | "answers", "answer_type"?}`` (VQAv2/GQA style).
- POPE JSONL: ``{"question_id", "image", "text", "label": "yes"|"no", "category"?}``.
- MME release folder: ``<subtask>/images/*.jpg`` + ``<subtask>/questions_answers_YN/*.txt``, or
  images and ``.txt`` side by side; each txt line is ``question<TAB>Yes|No``.
- captions: JSONL ``{"id", "image", "caption" | "captions"}`` or an eve-wds dataset directory.
- text corpus for perplexity: JSONL ``{"text"}`` or plain text, one document per line.

Bad input never gets scored silently: a missing or undecodable image, a malformed line or an
unknown answer type raises ``BenchmarkFormatError`` naming the file and line, or, with
``skip_invalid=True``, is left out and listed in ``Benchmark.skipped`` (with its reason).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN_ANSWER_TYPES = ("yes/no", "number", "other")
YES_NO = ("yes", "no")


class BenchmarkFormatError(ValueError):
    """A benchmark file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class EvalItem:
    """One evaluation sample, whatever format it came from."""

    item_id: str
    source: str
    """Where it was read from (``file:line``), for error messages."""
    prompt: str | None = None
    """The question shown to the model; None for captioning and perplexity items."""
    references: tuple[str, ...] = ()
    """Ground-truth answers or reference captions (several = several human answers)."""
    image_path: Path | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    """Encoded image when it came from a dataset shard rather than a file."""
    image_sha256: str | None = None
    group: str | None = None
    """Question type / category / MME subtask, for per-group metrics."""
    image_key: str | None = None
    """MME: the image a question pair belongs to (for acc+)."""
    text: str | None = None
    """Perplexity items: the held-out document."""

    def read_image_bytes(self) -> bytes | None:
        if self.image_bytes is not None:
            return self.image_bytes
        return self.image_path.read_bytes() if self.image_path is not None else None


@dataclass(frozen=True)
class SkippedItem:
    source: str
    reason: str


@dataclass
class Benchmark:
    """The items read from one benchmark, plus what was skipped and why."""

    items: list[EvalItem]
    skipped: list[SkippedItem]
    files: list[Path]

    @property
    def content_hash(self) -> str:
        """sha256 over the items (ids, prompts, references, groups, image hashes, texts).

        Independent of file layout and formatting, so the same questions give the same hash.
        """
        digest = hashlib.sha256()
        for item in self.items:
            row = [item.item_id, item.prompt, list(item.references), item.group, item.image_key,
                   item.image_sha256, item.text]
            digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        return digest.hexdigest()


class _Collector:
    """Raises on the first bad entry, or records it when skipping is allowed."""

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.items: list[EvalItem] = []
        self.skipped: list[SkippedItem] = []

    def reject(self, source: str, reason: str) -> None:
        if not self.skip_invalid:
            raise BenchmarkFormatError(f"{source}: {reason}")
        self.skipped.append(SkippedItem(source, reason))

    def finish(self, files: list[Path], what: str) -> Benchmark:
        if not self.items:
            detail = f" ({len(self.skipped)} skipped as invalid)" if self.skipped else ""
            raise BenchmarkFormatError(f"{what}: no valid items{detail}")
        counts = Counter(item.item_id for item in self.items)
        duplicates = sorted(item_id for item_id, count in counts.items() if count > 1)
        if duplicates:
            raise BenchmarkFormatError(f"{what}: duplicate item ids {duplicates[:5]}")
        return Benchmark(items=self.items, skipped=self.skipped, files=files)


class _Invalid(Exception):
    """Internal: one entry is bad; the collector decides whether to raise or skip."""


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed JSON or an ``_Invalid``) for every non-blank line."""
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: benchmark file not found")
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            source = f"{path}:{line_number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield source, _Invalid(f"malformed JSON line ({exc})")
                continue
            yield source, row if isinstance(row, dict) else _Invalid("line is not a JSON object")


def _require(row: dict, key: str, kind: type | tuple[type, ...] = str) -> Any:
    value = row.get(key)
    if value is None:
        raise _Invalid(f"missing field {key!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Invalid(f"field {key!r} has type {type(value).__name__}")
    return value


def _image(root: Path, name: str) -> tuple[Path, str]:
    """Resolve and check one image; returns (path, sha256 of its bytes)."""
    from PIL import Image

    candidate = Path(name)
    path = candidate if candidate.is_absolute() else root / candidate
    if not candidate.is_absolute() and not path.resolve().is_relative_to(root.resolve()):
        raise _Invalid(f"image path {name!r} leaves the image folder {root}")
    if not path.is_file():
        raise _Invalid(f"image not found: {path}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise _Invalid(f"image {path} cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return path, hashlib.sha256(data).hexdigest()


def _answers(row: dict) -> tuple[str, ...]:
    """Ground-truth answers from ``answer`` or ``answers`` (str, list of str, VQA answer dicts)."""
    answer_type = row.get("answer_type")
    if answer_type is not None and answer_type not in KNOWN_ANSWER_TYPES:
        raise _Invalid(f"unknown answer_type {answer_type!r}; expected one of {KNOWN_ANSWER_TYPES}")
    value = row.get("answers", row.get("answer"))
    if value is None:
        raise _Invalid("missing field 'answer' (or 'answers')")
    if isinstance(value, str):
        values: list[Any] = [value]
    elif isinstance(value, list) and value:
        values = [v.get("answer") if isinstance(v, dict) else v for v in value]
    else:
        raise _Invalid(f"unsupported answer type {type(value).__name__}: {value!r}")
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise _Invalid(f"unsupported answer value(s) {value!r}; expected non-empty strings")
    return tuple(values)


def _item_id(row: dict, key: str = "question_id") -> str:
    value = row.get(key)
    if value is None or isinstance(value, (bool, dict, list)):
        raise _Invalid(f"missing or invalid {key!r}")
    return str(value)


def read_vqa_jsonl(
    path: str | Path, image_root: str | Path | None = None, skip_invalid: bool = False
) -> Benchmark:
    """The demo's held-out VQA (and any JSONL with question, answer(s) and image per line)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    collector = _Collector(skip_invalid)
    for source, row in _jsonl_rows(path):
        try:
            if isinstance(row, _Invalid):
                raise row
            image_path, sha = _image(root, _require(row, "image"))
            group = row.get("question_type")
            collector.items.append(EvalItem(
                item_id=_item_id(row), source=source, prompt=_require(row, "question"),
                references=_answers(row), image_path=image_path, image_sha256=sha,
                group=str(group) if group is not None else None,
            ))
        except _Invalid as exc:
            collector.reject(source, str(exc))
    return collector.finish([path], str(path))


def read_llava_questions(
    question_file: str | Path,
    answers_file: str | Path,
    image_folder: str | Path | None = None,
    skip_invalid: bool = False,
) -> Benchmark:
    """LLaVA question JSONL with a separate ground-truth answers JSONL (VQAv2/GQA style)."""
    question_file, answers_file = Path(question_file), Path(answers_file)
    root = Path(image_folder) if image_folder is not None else question_file.parent
    collector = _Collector(skip_invalid)
    truth: dict[str, tuple[str, ...]] = {}
    bad_answer_ids: set[str] = set()
    for source, row in _jsonl_rows(answers_file):
        try:
            if isinstance(row, _Invalid):
                raise row
            question_id = _item_id(row)
            try:
                truth[question_id] = _answers(row)
            except _Invalid:
                bad_answer_ids.add(question_id)
                raise
        except _Invalid as exc:
            collector.reject(source, str(exc))
    for source, row in _jsonl_rows(question_file):
        try:
            if isinstance(row, _Invalid):
                raise row
            question_id = _item_id(row)
            if question_id in bad_answer_ids:
                raise _Invalid(f"question {question_id} skipped: its answer line is invalid")
            if question_id not in truth:
                raise _Invalid(f"no ground-truth answer for question_id {question_id} in {answers_file}")
            image_path, sha = _image(root, _require(row, "image"))
            category = row.get("category")
            collector.items.append(EvalItem(
                item_id=question_id, source=source, prompt=_require(row, "text"),
                references=truth[question_id], image_path=image_path, image_sha256=sha,
                group=str(category) if category is not None else None,
            ))
        except _Invalid as exc:
            collector.reject(source, str(exc))
    return collector.finish([question_file, answers_file], str(question_file))


def read_pope(
    question_file: str | Path, image_folder: str | Path | None = None, skip_invalid: bool = False
) -> Benchmark:
    """POPE JSONL (``label`` yes/no per question; ``category`` random/popular/adversarial)."""
    question_file = Path(question_file)
    root = Path(image_folder) if image_folder is not None else question_file.parent
    collector = _Collector(skip_invalid)
    for source, row in _jsonl_rows(question_file):
        try:
            if isinstance(row, _Invalid):
                raise row
            label = _require(row, "label").strip().lower()
            if label not in YES_NO:
                raise _Invalid(f"unknown answer {row['label']!r}; POPE labels are 'yes' or 'no'")
            image_path, sha = _image(root, _require(row, "image"))
            category = row.get("category")
            collector.items.append(EvalItem(
                item_id=_item_id(row), source=source, prompt=_require(row, "text"),
                references=(label,), image_path=image_path, image_sha256=sha,
                group=str(category) if category is not None else None,
            ))
        except _Invalid as exc:
            collector.reject(source, str(exc))
    return collector.finish([question_file], str(question_file))


def _mme_pairs(subtask_dir: Path) -> list[tuple[Path, Path]]:
    """(question txt, image folder) pairs for the two MME release layouts."""
    qa_dir = subtask_dir / "questions_answers_YN"
    if qa_dir.is_dir():
        return [(txt, subtask_dir / "images") for txt in sorted(qa_dir.glob("*.txt"))]
    return [(txt, subtask_dir) for txt in sorted(subtask_dir.glob("*.txt"))]


def read_mme(root: str | Path, skip_invalid: bool = False) -> Benchmark:
    """MME release folder: one folder per subtask, two yes/no questions per image."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkFormatError(f"{root}: MME folder not found")
    collector = _Collector(skip_invalid)
    files: list[Path] = []
    for subtask_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for txt, image_dir in _mme_pairs(subtask_dir):
            files.append(txt)
            image_matches = sorted(p for p in image_dir.glob(txt.stem + ".*") if p.suffix != ".txt")
            raw_lines = txt.read_bytes().splitlines()
            for line_number, raw in enumerate(raw_lines, start=1):
                source = f"{txt}:{line_number}"
                if not raw.strip():
                    continue
                try:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise _Invalid(f"not UTF-8 ({exc})") from exc
                    parts = line.rstrip("\r\n").split("\t")
                    if len(parts) != 2 or not parts[0].strip():
                        raise _Invalid("malformed line; expected 'question<TAB>Yes|No'")
                    answer = parts[1].strip().lower()
                    if answer not in YES_NO:
                        raise _Invalid(f"unknown answer {parts[1]!r}; MME answers are Yes or No")
                    if not image_matches:
                        raise _Invalid(f"image not found: {image_dir / txt.stem}.*")
                    image_path, sha = _image(image_dir, image_matches[0].name)
                    image_key = f"{subtask_dir.name}/{image_matches[0].name}"
                    collector.items.append(EvalItem(
                        item_id=f"{image_key}#{line_number}", source=source, prompt=parts[0].strip(),
                        references=(answer,), image_path=image_path, image_sha256=sha,
                        group=subtask_dir.name, image_key=image_key,
                    ))
                except _Invalid as exc:
                    collector.reject(source, str(exc))
    return collector.finish(files, str(root))


def read_caption_jsonl(
    path: str | Path,
    image_root: str | Path | None = None,
    skip_invalid: bool = False,
    reference_field: str | None = None,
) -> Benchmark:
    """Held-out captioning JSONL: ``{"id", "image", "caption" | "captions"}`` per line.

    ``reference_field`` reads the references from another field (e.g. the demo's ``true_caption``).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    collector = _Collector(skip_invalid)
    for source, row in _jsonl_rows(path):
        try:
            if isinstance(row, _Invalid):
                raise row
            item_id = _item_id(row, "id" if "id" in row else "image_id")
            captions = row.get(reference_field) if reference_field else row.get("captions", row.get("caption"))
            captions = [captions] if isinstance(captions, str) else captions
            if not isinstance(captions, list) or not captions or not all(
                isinstance(c, str) and c.strip() for c in captions
            ):
                field_name = reference_field or "caption'/'captions"
                raise _Invalid(f"field '{field_name}' must be a non-empty string or list of strings")
            image_path, sha = _image(root, _require(row, "image"))
            collector.items.append(EvalItem(
                item_id=item_id, source=source, references=tuple(captions),
                image_path=image_path, image_sha256=sha,
            ))
        except _Invalid as exc:
            collector.reject(source, str(exc))
    return collector.finish([path], str(path))


def read_caption_dataset(location: str | Path, skip_invalid: bool = False) -> Benchmark:
    """Held-out captioning from an eve-wds dataset directory (image + caption per sample)."""
    from PIL import Image

    from eve_model.shards import iter_samples, verify_dataset

    verify_dataset(location)
    collector = _Collector(skip_invalid)
    for sample in iter_samples(location):
        source = f"{location}#{sample.key}"
        try:
            caption = sample.caption
            if not isinstance(caption, str) or not caption.strip():
                raise _Invalid("sample has no caption")
            if not sample.image_bytes:
                raise _Invalid("sample has no image")
            try:
                with Image.open(io.BytesIO(sample.image_bytes)) as image:
                    image.verify()
            except Exception as exc:
                raise _Invalid(f"image cannot be decoded ({type(exc).__name__}: {exc})") from exc
            collector.items.append(EvalItem(
                item_id=sample.key, source=source, references=(caption,),
                image_bytes=sample.image_bytes,
                image_sha256=hashlib.sha256(sample.image_bytes).hexdigest(),
            ))
        except _Invalid as exc:
            collector.reject(source, str(exc))
    return collector.finish([Path(str(location)) / "manifest.json"], str(location))


def read_text_corpus(path: str | Path, skip_invalid: bool = False) -> Benchmark:
    """Held-out text for perplexity: JSONL with ``text`` or plain text, one document per line."""
    path = Path(path)
    collector = _Collector(skip_invalid)
    if path.suffix == ".jsonl":
        for source, row in _jsonl_rows(path):
            try:
                if isinstance(row, _Invalid):
                    raise row
                text = _require(row, "text")
                if not text.strip():
                    raise _Invalid("empty text")
                item_id = str(row.get("id", source.rsplit(":", 1)[1]))
                collector.items.append(EvalItem(item_id=item_id, source=source, text=text))
            except _Invalid as exc:
                collector.reject(source, str(exc))
    else:
        if not path.is_file():
            raise BenchmarkFormatError(f"{path}: text corpus not found")
        for line_number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            source = f"{path}:{line_number}"
            if not raw.strip():
                continue
            try:
                collector.items.append(EvalItem(
                    item_id=str(line_number), source=source, text=raw.decode("utf-8").strip()
                ))
            except UnicodeDecodeError as exc:
                collector.reject(source, f"not UTF-8 ({exc})")
    return collector.finish([path], str(path))
