"""The model card of a registered version: what the registry knows, added to the card the training job wrote.

The training job's card (``eve_model.training.stage_protocol.write_stage_model_card``) describes one stage:
its dataset, its config, its metrics, the intended use and limitations of its model family. At
registration the registry rewrites the sections that describe the whole version (``eve_model.model_card``
updates a card section by section and keeps the rest):

- **Training data**: every dataset version of the lineage (raw sources to the training sets), by hash,
  DVC md5, size and parents;
- **Training procedure**: the recipe, the retrain run, the code revision, every stage (dataset, parent and
  own weights hash, config hash, scheduler jobs, cache hit);
- **Evaluation**: every metric next to production, the model before SFT and the answer baselines, the
  gate's verdict per rule, the contamination check;
- **Approval**: pending at registration; at approval who approved, when, why, on which evidence, and since
  when the version holds production.

The card goes into the registered checkpoint (``models/eve/README.md``, DVC-tracked with the weights: a
model card is outside the weights hash) and, kept current, into the registry repository beside the lineage
manifest (``cards/eve/<version>/README.md``): approvals arrive after the version's weights are fixed, so the
repository's copy is the one ``eve registry show VERSION`` prints and ``pull_version`` puts into a pulled
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from eve_model.model_card import MODEL_CARD_FILE, markdown_table, read_model_card_sections, write_model_card
from tasks.evaluate.contamination import ContaminationReport
from tasks.evaluate.gates import GateDecision
from tasks.lineage.schema import ApprovalRecord, LineageManifest

CARDS_DIR = "cards"
"""Folder of the current cards in the registry repository: ``cards/<model>/<version>/README.md``."""

DEFAULT_INTENDED_USE = (
    "Answering questions about and describing images, as an encoder-free vision-language model (EVE). "
    "Evaluate it on your own data before use; it is not meant for decisions about people."
)
DEFAULT_LIMITATIONS = (
    "Trained only on the datasets listed under Training data; its answers outside that domain are unmeasured. "
    "Like other vision-language models it can state things the image does not show."
)


class ModelCardFacts(BaseModel):
    """What the retrain knows about a candidate beyond its lineage, for its card."""

    recipe_name: str | None = None
    """The recipe of the retrain (``RetrainParameters.recipe_name``)."""
    run_name: str | None = None
    """The retrain's flow run name."""
    production_version: str | None = None
    """The version in production when the candidate was evaluated."""
    production_metrics: dict[str, float] = Field(default_factory=dict)
    """Its metrics on the same suites."""
    before_sft_metrics: dict[str, float] = Field(default_factory=dict)
    """The candidate's parent stage (before SFT) on the VQA suites."""
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Metric -> {uniform chance, most common answer}."""
    contamination: str | None = None
    """The contamination check in one sentence."""


# ---------------------------------------------------------------------------------- the registry's sections


def contamination_sentence(report: ContaminationReport) -> str:
    """The contamination check in one sentence, for the card's evaluation section."""
    overlap = "" if report.ngram_overlap_rate is None else (
        f"; {report.ngram_overlap_rate:.1%} of {report.eval_texts_checked} references share a "
        f"{report.ngram_n}-word sequence with the training text")
    return (f"{report.num_contaminated_images} of {report.num_eval_images} evaluation images found among "
            f"{report.num_train_images} training images ({len(report.exact_byte_matches) + len(report.exact_pixel_matches)} "
            f"exact, {len(report.near_duplicates)} near duplicates){overlap}.")


def card_dir(repo_dir: Path, model: str, version: str) -> Path:
    """Where the registry repository keeps a version's current card."""
    return Path(repo_dir) / CARDS_DIR / model / version


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _training_data(manifest: LineageManifest) -> str:
    rows = ["| role | dataset hash | DVC md5 | items | derived from |", "|---|---|---|---|---|"]
    for ref in manifest.all_datasets():
        parents = ", ".join(f"`{parent[:12]}`" for parent in ref.derived_from) or "–"
        rows.append(f"| {ref.role} | `{ref.dataset_hash}` | `{ref.dvc_md5 or '–'}` | "
                    f"{ref.num_items if ref.num_items is not None else '–'} | {parents} |")
    return "Every dataset version behind this model, by content hash (`eve lineage` traces them):\n\n" + "\n".join(rows)


def _training_procedure(manifest: LineageManifest, facts: ModelCardFacts) -> str:
    head = markdown_table([
        ("recipe", facts.recipe_name or "–"),
        ("retrain run", facts.run_name or "–"),
        ("platform commit", manifest.code_revision),
        ("caption backend", f"{manifest.caption.identity.backend} / {manifest.caption.identity.model_id}"
         if manifest.caption else "–"),
        ("caption gate", f"{manifest.quality.suite_name} {manifest.quality.suite_version}: "
         f"{'passed' if manifest.quality.success else 'failed'}" if manifest.quality else "–"),
    ])
    rows = ["| stage | trained on | from | weights | config | jobs | cached |", "|---|---|---|---|---|---|---|"]
    for stage in manifest.stages:
        rows.append(
            f"| {stage.name} | `{stage.input_dataset_hash[:12]}` | `{(stage.parent_weights_sha256 or '–')[:12]}` | "
            f"`{stage.weights_sha256[:12]}` | `{stage.config_sha256[:12]}` | {stage.scheduler} "
            f"{', '.join(stage.job_ids) or '–'} | {'yes' if stage.cache_hit else 'no'} |"
        )
    return head + "\n\n" + "\n".join(rows)


def _evaluation(manifest: LineageManifest, facts: ModelCardFacts) -> str:
    evaluation = manifest.evaluation
    if evaluation is None:
        return "_No evaluation was recorded with this version._"
    baseline_names = sorted({name for values in facts.baselines.values() for name in values})
    against = f"production {facts.production_version}" if facts.production_version else "production (none)"
    header = ["metric", "this version", against, "before SFT", *baseline_names]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, value in sorted(evaluation.metrics.items()):
        rows.append("| " + " | ".join([
            f"`{name}`", f"**{value:.4g}**", _number(facts.production_metrics.get(name)),
            _number(facts.before_sft_metrics.get(name)),
            *[_number(facts.baselines.get(name, {}).get(b)) for b in baseline_names],
        ]) + " |")
    gate: GateDecision = evaluation.gate
    verdict = "passed" if gate.passed else "failed"
    checks = "\n".join(f"- {'pass' if c.passed else 'FAIL'} {c.rule} `{c.metric}`: {c.reason}" for c in gate.checks)
    parts = ["\n".join(rows), f"Evaluation gate (rules v{gate.rules_version}) {verdict}:\n\n{checks}"]
    if facts.contamination:
        parts.append(f"Contamination: {facts.contamination}")
    return "\n\n".join(parts)


def _pending(manifest: LineageManifest) -> str:
    return (f"Registered {manifest.created_at or '?'}; not approved for production yet. A version moves to "
            "production only with approvals the platform's policy accepts (`eve registry history`).")


def approval_section(approvals: list[ApprovalRecord], production_since: str | None) -> str:
    """Who approved (or rejected) this version, when, why, on which evidence; since when it holds production."""
    if not approvals:
        return "Not approved for production yet."
    rows = ["| decision | reviewer | decided (UTC) | requested by | comment | evidence |", "|---|---|---|---|---|---|"]
    for approval in approvals:
        comment = approval.comment.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {approval.decision} | {approval.reviewer} | {approval.decided_at} | {approval.requested_by} | "
                    f"{comment} | `{approval.evidence_sha256[:16]}` |")
    since = f"Holds production since {production_since}." if production_since else ""
    return "\n".join(rows) + ("\n\n" + since if since else "")


def write_registration_card(
    directory: Path, manifest: LineageManifest, facts: ModelCardFacts | None, weights_sha256: str
) -> Path:
    """The card of a version being registered, written into ``directory`` (its checkpoint or its card
    folder): the sections the training job wrote are kept, the version's sections replaced."""
    facts = facts or ModelCardFacts()
    existing = read_model_card_sections(directory)
    sections = {
        "Training data": _training_data(manifest),
        "Training procedure": _training_procedure(manifest, facts),
        "Evaluation": _evaluation(manifest, facts),
        "Approval": _pending(manifest),
    }
    for title, default in (("Intended use", DEFAULT_INTENDED_USE), ("Limitations", DEFAULT_LIMITATIONS)):
        if title not in existing:
            sections[title] = default
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["eve", "vision-language", "encoder-free"],
        "eve_version": manifest.ref,
        "weights_sha256": weights_sha256,
    }
    return write_model_card(directory, sections, metadata, title=manifest.ref)


def write_approval_card(directory: Path, approvals: list[ApprovalRecord]) -> Path:
    """Update a version's card with its approvals when it moves to production. "Since" is the last
    approval's decision time, so writing the card again (a recovered assignment) changes nothing."""
    since = max((a.decided_at for a in approvals), default=None)
    return write_model_card(directory, {"Approval": approval_section(approvals, since)}, {"production_since": since})


__all__ = [
    "CARDS_DIR",
    "MODEL_CARD_FILE",
    "ModelCardFacts",
    "approval_section",
    "card_dir",
    "contamination_sentence",
    "markdown_table",
    "read_model_card_sections",
    "write_approval_card",
    "write_model_card",
    "write_registration_card",
]
