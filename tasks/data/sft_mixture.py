"""The stage-3 (SFT) training set as LLaVA mixes it: instruction conversations plus caption conversations
and text-only turns, one dataset version with two parents.

LLaVA-1.5's SFT mixture (and EVE's, which reuses it) is not VQA alone: it keeps detailed-description
conversations and text-only chat so the model keeps describing images and keeps its language. Here:

- every sample of the gated **instruction** dataset, unchanged (key ``inst-<key>``);
- ``caption_conversation_ratio`` x that many **caption conversations** drawn from the gated **caption**
  dataset: the image, a description prompt, the caption as the answer (``capt-<key>``);
- ``text_only_ratio`` x that many **text-only turns** from caption samples (drawn separately): no image, a prompt that
  asks for a description of such a scene in words, the caption as the answer (``text-<key>``), so the
  decoder keeps modelling the language of descriptions without an image.

Which caption samples are drawn is a pure function of the two input hashes and the config (seeded), so the
mixture's dataset hash is too; a rerun with the same inputs finds its finished output. The manifest's
``extra.sft_mixture`` records both parents' hashes (lineage shows the mixture derived from both) and the
counts, which reconcile: written = instruction + caption conversations + text-only turns.

Run by hand::

    python -m tasks.data.sft_mixture INSTRUCTION_DIR CAPTION_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.shards import DatasetIntegrityError, ShardSample, ShardWriter, iter_samples, read_manifest, verify_dataset

MIXTURE_FORMAT = "eve-sft-mixture/1"

DESCRIPTION_PROMPTS = (
    "Describe the image briefly.",
    "Describe the image.",
    "What is in this picture? Describe every shape.",
    "Give a short description of this image.",
)
"""Prompts of caption conversations (with the image), picked per sample."""

TEXT_ONLY_PROMPTS = (
    "Write a one-sentence description of a picture of coloured shapes.",
    "Describe, in one sentence, a simple scene with a few coloured shapes on a plain background.",
    "Make up a short description of an image of geometric shapes.",
)
"""Prompts of text-only turns (no image): the answer is a description in words alone."""


class SftMixtureConfig(BaseModel):
    """How much caption and text-only data joins the instruction conversations in stage 3."""

    caption_conversation_ratio: float = Field(default=0.5, ge=0)
    """Caption conversations per instruction sample (LLaVA-1.5's mixture keeps detailed descriptions)."""

    text_only_ratio: float = Field(default=0.25, ge=0)
    """Text-only turns per instruction sample (LLaVA-1.5: ShareGPT text-only chat)."""

    seed: int = 0
    """Seed of which caption samples are drawn and which prompt each gets."""

    max_items_per_shard: int = Field(default=500, ge=1)
    """Samples per tar shard of the mixture."""


class SftMixtureReport(BaseModel):
    """What a mixture run wrote, with counts that reconcile."""

    dataset_dir: str
    dataset_hash: str
    instruction_dataset_hash: str
    caption_dataset_hash: str
    num_instruction: int
    num_caption_conversations: int
    num_text_only: int
    num_written: int

    @property
    def reconciles(self) -> bool:
        return self.num_written == self.num_instruction + self.num_caption_conversations + self.num_text_only

    def table_rows(self) -> list[dict[str, object]]:
        return [
            {"part": "instruction conversations", "samples": self.num_instruction, "from": self.instruction_dataset_hash[:16]},
            {"part": "caption conversations", "samples": self.num_caption_conversations, "from": self.caption_dataset_hash[:16]},
            {"part": "text-only turns", "samples": self.num_text_only, "from": self.caption_dataset_hash[:16]},
            {"part": "mixture", "samples": self.num_written, "from": self.dataset_hash[:16]},
        ]


def _pick(rng: random.Random, options: tuple[str, ...]) -> str:
    return options[rng.randrange(len(options))]


def caption_conversation(sample: ShardSample, prompt: str) -> ShardSample:
    """The image with one exchange: ``<image>`` + a description prompt, then the caption."""
    meta = {key: value for key, value in sample.meta.items() if key != "conversations"}
    meta["conversations"] = [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{prompt}"},
        {"from": "gpt", "value": sample.caption},
    ]
    meta["sft_mixture_part"] = "caption"
    return ShardSample(key=f"capt-{sample.key}", meta=meta, image_bytes=sample.image_bytes, image_ext=sample.image_ext)


def text_only_turn(sample: ShardSample, prompt: str) -> ShardSample:
    """No image: a prompt asking for a description in words, then the caption."""
    meta = {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": sample.caption}],
            "source": sample.meta.get("source"), "sft_mixture_part": "text"}
    return ShardSample(key=f"text-{sample.key}", meta=meta)


def build_sft_mixture(instruction_dir: str | Path, caption_dir: str | Path, output_dir: str | Path,
                      config: SftMixtureConfig | None = None) -> SftMixtureReport:
    """Write the mixture of ``instruction_dir`` and ``caption_dir`` (both eve-wds/1 datasets) into
    ``output_dir``; returns its report. Raises ``DatasetIntegrityError`` when the caption dataset has fewer
    captioned samples than the ratios ask for (nothing is written then)."""
    config = config or SftMixtureConfig()
    instruction_manifest, caption_manifest = read_manifest(instruction_dir), read_manifest(caption_dir)
    num_instruction = instruction_manifest.num_items
    want_captions = round(config.caption_conversation_ratio * num_instruction)
    want_text = round(config.text_only_ratio * num_instruction)
    captioned = [sample.key for sample in iter_samples(caption_dir, manifest=caption_manifest)
                 if isinstance(sample.caption, str) and sample.caption.strip()]
    if max(want_captions, want_text) > len(captioned):
        raise DatasetIntegrityError(
            f"the SFT mixture asks for {want_captions} caption conversations and {want_text} text-only turns, but "
            f"{caption_dir} has {len(captioned)} captioned samples; lower the ratios"
        )
    seed_material = f"{config.seed}|{instruction_manifest.dataset_hash}|{caption_manifest.dataset_hash}"
    rng = random.Random(int(hashlib.sha256(seed_material.encode()).hexdigest(), 16))
    # Two independent draws: a caption may be used once with its image and once as text (different samples).
    as_caption = set(rng.sample(sorted(captioned), want_captions))
    as_text = set(rng.sample(sorted(captioned), want_text))
    extra = {"sft_mixture": {
        "format": MIXTURE_FORMAT,
        "parents": {"instruction": instruction_manifest.dataset_hash, "captions": caption_manifest.dataset_hash},
        "config": config.model_dump(),
        "counts": {"instruction": num_instruction, "caption_conversations": want_captions, "text_only": want_text},
    }}
    with ShardWriter(output_dir, max_items_per_shard=config.max_items_per_shard, extra=extra) as writer:
        for sample in iter_samples(instruction_dir, manifest=instruction_manifest):
            writer.write(ShardSample(key=f"inst-{sample.key}", meta=sample.meta, image_bytes=sample.image_bytes,
                                     image_ext=sample.image_ext))
        for sample in iter_samples(caption_dir, manifest=caption_manifest):
            if sample.key in as_caption:
                writer.write(caption_conversation(sample, _pick(rng, DESCRIPTION_PROMPTS)))
            if sample.key in as_text:
                writer.write(text_only_turn(sample, _pick(rng, TEXT_ONLY_PROMPTS)))
    manifest = writer.manifest
    report = SftMixtureReport(
        dataset_dir=str(output_dir), dataset_hash=manifest.dataset_hash,
        instruction_dataset_hash=instruction_manifest.dataset_hash, caption_dataset_hash=caption_manifest.dataset_hash,
        num_instruction=num_instruction, num_caption_conversations=want_captions, num_text_only=want_text,
        num_written=manifest.num_items,
    )
    if not report.reconciles:
        raise DatasetIntegrityError(f"SFT mixture counts do not reconcile: {report.model_dump()}")
    return report


def mixture_input_key(instruction_hash: str, caption_hash: str) -> str:
    """One content key for the mixture's two inputs (names its output folder with the config)."""
    return hashlib.sha256(f"{MIXTURE_FORMAT}|{instruction_hash}|{caption_hash}".encode()).hexdigest()


def finished_mixture(output_dir: str | Path, instruction_hash: str, caption_hash: str,
                     config: SftMixtureConfig) -> SftMixtureReport | None:
    """The report of an earlier, complete run with exactly these inputs in ``output_dir``, or None."""
    try:
        manifest = verify_dataset(output_dir)  # manifest and every shard as recorded
    except (DatasetIntegrityError, FileNotFoundError, OSError, ValueError):
        return None
    recorded = manifest.extra.get("sft_mixture", {})
    if recorded.get("parents") != {"instruction": instruction_hash, "captions": caption_hash} or \
            recorded.get("config") != config.model_dump():
        return None
    counts = recorded["counts"]
    return SftMixtureReport(
        dataset_dir=str(output_dir), dataset_hash=manifest.dataset_hash, instruction_dataset_hash=instruction_hash,
        caption_dataset_hash=caption_hash, num_instruction=counts["instruction"],
        num_caption_conversations=counts["caption_conversations"], num_text_only=counts["text_only"],
        num_written=manifest.num_items,
    )


__all__ = ["SftMixtureConfig", "SftMixtureReport", "build_sft_mixture", "finished_mixture", "mixture_input_key"]


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.split("Run by hand::")[1].strip(), file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(build_sft_mixture(*sys.argv[1:]).model_dump(), indent=2))
