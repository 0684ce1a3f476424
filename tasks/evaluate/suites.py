"""Evaluation suites: what to read (pydantic specs) and how to score model outputs.

A suite spec is a flow parameter (Prefect draws it as a form); ``load_benchmark(spec)`` reads its
items through ``readers.py`` and ``score_generations`` / ``score_perplexity`` turn plain model
outputs into a ``SuiteResult``. No model code here: the harness produces the outputs.

    spec = VqaSuite(name="demo_vqa", path="data/demo/heldout_vqa.jsonl")
    result = score_generations(spec, load_benchmark(spec), predictions)

Bump a kind's entry in ``SUITE_VERSIONS`` whenever its scoring changes: reports with different
versions are not compared by the gate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.evaluate import metrics as M
from tasks.evaluate import readers
from tasks.evaluate.report import SampleRecord, SkippedRecord, SuiteResult
from tasks.platform import PlatformSettings
from tasks.publish import atomic_write_text

SUITE_VERSIONS = {
    "vqa": "vqa/1",
    "llava_vqa": "llava_vqa/1",
    "pope": "pope/1",
    "mme": "mme/1",
    "caption": "caption/1",
    "perplexity": "perplexity/1",
}
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
"""LLaVA-1.5's short-answer prompt suffix (upstream EVE evaluates the same way)."""


class _SuiteBase(BaseModel):
    # extra="forbid": a misspelt option must not be ignored silently; docstrings become UI help.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Suite name; metrics are reported as ``<name>/<metric>`` and gated under that key."""
    skip_invalid: bool = False
    """Skip malformed entries (reported with their reasons) instead of failing on the first one."""
    template: str | None = None
    """Prompt template override for this suite (default: the harness's, ``vicuna_v1``)."""
    max_new_tokens: int | None = None
    """Decoding budget override (short answers need few tokens)."""


class VqaSuite(_SuiteBase):
    """Short-answer VQA from one JSONL (the demo's held-out set): exact match / soft accuracy."""

    kind: Literal["vqa"] = "vqa"
    path: Path
    """JSONL with question_id, image, question, answer(s), question_type."""
    image_root: Path | None = None
    """Folder image paths are relative to; default: the JSONL's folder."""
    prompt_suffix: str = ""
    """Appended to every question on a new line (e.g. ``SHORT_ANSWER_INSTRUCTION``)."""


class LlavaVqaSuite(_SuiteBase):
    """LLaVA question JSONL + ground-truth answers JSONL (VQAv2/GQA-style soft accuracy)."""

    kind: Literal["llava_vqa"] = "llava_vqa"
    question_file: Path
    answers_file: Path
    image_folder: Path | None = None
    """Default: the question file's folder."""
    prompt_suffix: str = ""


class PopeSuite(_SuiteBase):
    """POPE object-hallucination probe: yes/no accuracy, precision, recall, F1, yes-ratio."""

    kind: Literal["pope"] = "pope"
    question_file: Path
    image_folder: Path | None = None
    prompt_suffix: str = SHORT_ANSWER_INSTRUCTION


class MmeSuite(_SuiteBase):
    """MME (release folder layout): per-subtask acc and acc+, perception/cognition scores."""

    kind: Literal["mme"] = "mme"
    root: Path


class CaptionSuite(_SuiteBase):
    """Captioning of held-out images: CIDEr-D, BLEU-4, ROUGE-L."""

    kind: Literal["caption"] = "caption"
    path: str
    """Captions JSONL (id, image, caption(s)) or an eve-wds dataset directory/URL."""
    image_root: Path | None = None
    reference_field: str | None = None
    """JSONL field holding the reference caption(s); default ``captions`` or ``caption``."""
    prompt: str = "Provide a one-sentence caption for the provided image."
    """Instruction given with each image (LLaVA's COCO-caption prompt)."""


class PerplexitySuite(_SuiteBase):
    """Text-only perplexity on held-out text (language ability erodes during vision training)."""

    kind: Literal["perplexity"] = "perplexity"
    path: Path
    """JSONL with ``text`` per line, or a plain text file with one document per line."""


SuiteSpec = Annotated[
    VqaSuite | LlavaVqaSuite | PopeSuite | MmeSuite | CaptionSuite | PerplexitySuite,
    Field(discriminator="kind"),
]
GENERATION_KINDS = ("vqa", "llava_vqa", "pope", "mme", "caption")


def load_benchmark(spec: SuiteSpec) -> readers.Benchmark:
    """Read and validate a suite's items (raises ``BenchmarkFormatError`` on bad input)."""
    skip = spec.skip_invalid
    if isinstance(spec, VqaSuite):
        return readers.read_vqa_jsonl(spec.path, spec.image_root, skip)
    if isinstance(spec, LlavaVqaSuite):
        return readers.read_llava_questions(spec.question_file, spec.answers_file, spec.image_folder, skip)
    if isinstance(spec, PopeSuite):
        return readers.read_pope(spec.question_file, spec.image_folder, skip)
    if isinstance(spec, MmeSuite):
        return readers.read_mme(spec.root, skip)
    if isinstance(spec, CaptionSuite):
        if spec.path.endswith(".jsonl"):
            return readers.read_caption_jsonl(spec.path, spec.image_root, skip, spec.reference_field)
        return readers.read_caption_dataset(spec.path, skip)
    if isinstance(spec, PerplexitySuite):
        return readers.read_text_corpus(spec.path, skip)
    raise TypeError(f"unknown suite spec {type(spec).__name__}")


def prompt_for(spec: SuiteSpec, item: readers.EvalItem) -> str:
    """The text shown to the model for one item (question plus the suite's suffix)."""
    if isinstance(spec, CaptionSuite):
        return spec.prompt
    suffix = getattr(spec, "prompt_suffix", "")
    question = item.prompt or ""
    return f"{question}\n{suffix}" if suffix and suffix not in question else question


def _result(
    spec: SuiteSpec,
    benchmark: readers.Benchmark,
    metrics: dict[str, float],
    higher_is_better: dict[str, bool],
    sample_metrics: list[str],
    samples: list[SampleRecord],
    settings: dict,
) -> SuiteResult:
    return SuiteResult(
        name=spec.name,
        kind=spec.kind,
        suite_version=SUITE_VERSIONS[spec.kind],
        eval_set_hash=benchmark.content_hash,
        num_items=len(benchmark.items),
        skipped=[SkippedRecord(source=s.source, reason=s.reason) for s in benchmark.skipped],
        metrics=metrics,
        higher_is_better=higher_is_better,
        sample_metrics=sample_metrics,
        samples=samples,
        settings=settings,
    )


def score_generations(
    spec: SuiteSpec, benchmark: readers.Benchmark, predictions: list[str], settings: dict | None = None
) -> SuiteResult:
    """Score one prediction per benchmark item (same order) into a ``SuiteResult``."""
    items = benchmark.items
    if len(predictions) != len(items):
        raise ValueError(
            f"suite {spec.name}: {len(predictions)} predictions for {len(items)} items; "
            "refusing to score partial results"
        )
    settings = dict(settings or {})
    groups = [item.group for item in items]

    def record(item: readers.EvalItem, prediction: str, **scores: float) -> SampleRecord:
        return SampleRecord(
            item_id=item.item_id, prompt=prompt_for(spec, item), prediction=prediction,
            references=list(item.references), group=item.group, scores=scores,
        )

    if isinstance(spec, (VqaSuite, LlavaVqaSuite)):
        accuracy = [M.vqa_soft_accuracy(p, item.references) for p, item in zip(predictions, items)]
        metrics = {"accuracy": M.mean(accuracy)}
        metrics.update({f"accuracy_{g}": v for g, v in M.grouped_mean(accuracy, groups).items()})
        samples = [record(i, p, accuracy=a) for i, p, a in zip(items, predictions, accuracy)]
        return _result(spec, benchmark, metrics, dict.fromkeys(metrics, True), ["accuracy"], samples, settings)

    if isinstance(spec, PopeSuite):
        parsed = [M.pope_yes_no(p) for p in predictions]
        labels = [item.references[0] for item in items]
        correct = [float(p == t) for p, t in zip(parsed, labels)]
        stats = M.pope_metrics(parsed, labels)
        metrics = {"accuracy": stats.accuracy, "precision": stats.precision, "recall": stats.recall,
                   "f1": stats.f1, "yes_ratio": stats.yes_ratio}
        for group in sorted({g for g in groups if g is not None}):
            chosen = [k for k, g in enumerate(groups) if g == group]
            group_stats = M.pope_metrics([parsed[k] for k in chosen], [labels[k] for k in chosen])
            metrics[f"f1_{group}"] = group_stats.f1
            metrics[f"accuracy_{group}"] = group_stats.accuracy
        # yes_ratio has no better direction; 0.5 on a balanced set. Reported, not gated by default.
        direction = {k: k != "yes_ratio" for k in metrics}
        samples = [record(i, p, accuracy=c) for i, p, c in zip(items, predictions, correct)]
        return _result(spec, benchmark, metrics, direction, ["accuracy"], samples, settings)

    if isinstance(spec, MmeSuite):
        parsed = [M.mme_yes_no(p) for p in predictions]
        correct = [p == item.references[0] for p, item in zip(parsed, items)]
        subtasks = M.mme_subtask_scores(correct, [i.group or "" for i in items], [i.image_key or i.item_id for i in items])
        metrics = dict(M.mme_totals(subtasks))
        metrics["accuracy"] = M.mean([float(c) for c in correct])
        for name, score in subtasks.items():
            metrics[f"{name}_acc"] = score.accuracy
            metrics[f"{name}_acc_plus"] = score.accuracy_plus
            metrics[f"{name}_score"] = score.score
        samples = [record(i, p, accuracy=float(c)) for i, p, c in zip(items, predictions, correct)]
        return _result(spec, benchmark, metrics, dict.fromkeys(metrics, True), ["accuracy"], samples, settings)

    if isinstance(spec, CaptionSuite):
        scores = M.caption_scores(predictions, [item.references for item in items])
        metrics = {"cider_d": scores.cider_d, "bleu_4": scores.bleu_4, "rouge_l": scores.rouge_l}
        samples = [
            record(i, p, cider_d=c, rouge_l=r, bleu_4=b)
            for i, p, c, r, b in zip(items, predictions, scores.per_sample_cider_d,
                                     scores.per_sample_rouge_l, scores.per_sample_bleu_4)
        ]
        return _result(spec, benchmark, metrics, dict.fromkeys(metrics, True), ["cider_d", "rouge_l"], samples, settings)

    raise TypeError(f"suite {spec.name}: kind {spec.kind!r} is not a generation suite")


def score_perplexity(
    spec: PerplexitySuite,
    benchmark: readers.Benchmark,
    nll: list[tuple[float, int]],
    settings: dict | None = None,
) -> SuiteResult:
    """Score per-document (sum of token NLLs in nats, number of scored tokens) pairs."""
    items = benchmark.items
    if len(nll) != len(items):
        raise ValueError(f"suite {spec.name}: {len(nll)} NLL values for {len(items)} documents")
    sums = [total for total, _ in nll]
    counts = [count for _, count in nll]
    samples = [
        SampleRecord(item_id=item.item_id, prompt=None, prediction=None, references=[],
                     scores={"token_nll": total / count if count else 0.0}, weight=float(count))
        for item, (total, count) in zip(items, nll)
    ]
    perplexity = M.perplexity_from_nll(sums, counts)  # raises when no token was scored
    metrics = {
        # token_nll (the token-weighted mean of per-document NLL, nats) is what the gate
        # bootstraps; perplexity = exp(token_nll) is the familiar number.
        "token_nll": sum(sums) / sum(counts),
        "perplexity": perplexity,
    }
    direction = {"token_nll": False, "perplexity": False}
    settings = {**(settings or {}), "num_tokens": sum(counts)}
    return _result(spec, benchmark, metrics, direction, ["token_nll"], samples, settings)


_PRIMARY_FIELD = {
    "vqa": "path", "llava_vqa": "question_file", "pope": "question_file", "mme": "root",
    "caption": "path", "perplexity": "path",
}


def parse_suite_shorthand(text: str) -> SuiteSpec:
    """``KIND=PATH[,field=value...]`` -> a suite spec (the ``eve evaluate --suite`` syntax).

    ``pope=pope.jsonl,image_folder=coco/val2014,name=pope_adv``; the name defaults to the kind.
    """
    from pydantic import TypeAdapter, ValidationError

    kind, separator, rest = text.partition("=")
    if not separator or kind not in _PRIMARY_FIELD or not rest:
        raise ValueError(f"--suite {text!r}: expected KIND=PATH[,field=value...] with KIND one of {sorted(_PRIMARY_FIELD)}")
    path, *options = rest.split(",")
    fields: dict[str, str] = {"kind": kind, "name": kind, _PRIMARY_FIELD[kind]: path}
    for option in options:
        key, separator, value = option.partition("=")
        if not separator:
            raise ValueError(f"--suite {text!r}: option {option!r} is not field=value")
        fields[key.strip()] = value
    try:
        return TypeAdapter(SuiteSpec).validate_python(fields)
    except ValidationError as exc:
        raise ValueError(f"--suite {text!r}: {exc}") from exc


def demo_evaluation_suites(eval_questions_path: str) -> list[SuiteSpec]:
    """The demo's held-out VQA (per question type; its questions carry their own answer-format
    instruction, as in training) and text-only perplexity on held-out text.

    The held-out text is the descriptions of the held-out scenes (``captions.jsonl`` next to the
    questions): text the model never trained on, in the language the base-LLM bootstrap and the
    caption stages teach, so perplexity tracks language ability. (The questions themselves are
    no such text: the bootstrap corpus is captions only and SFT scores only answers, so even the
    base LLM scored about 12k perplexity on them.) Without that file the questions with their
    answers as sentences are used.
    """
    questions_path = Path(eval_questions_path)
    captions_path = questions_path.with_name("captions.jsonl")
    source = captions_path if captions_path.exists() else questions_path
    # Derived inputs live under the platform home: data/ is DVC-tracked and must stay as recorded.
    digest = hashlib.sha256(source.name.encode() + source.read_bytes()).hexdigest()[:16]
    text_path = PlatformSettings.load().path("evaluation-inputs") / f"heldout_text-{digest}.jsonl"
    if not text_path.exists():
        lines = []
        for raw in source.read_text(encoding="utf-8").splitlines():
            if raw.strip():
                row = json.loads(raw)
                text = row["caption"] if source is captions_path else f"{row['question']} {row['answer']}."
                lines.append(json.dumps({"text": text}))
        atomic_write_text(text_path, "\n".join(lines) + "\n")  # two runs may derive it at once
    return [
        VqaSuite(name="demo_vqa", path=questions_path, max_new_tokens=8),
        PerplexitySuite(name="heldout_text", path=text_path),
    ]
