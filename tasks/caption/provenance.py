"""Where a caption came from: backend, model and weights hash, prompt template and version, decoding.

Every captioned sample carries a ``caption_provenance`` dict (``CaptionProvenance.model_dump``),
so a dataset version records per caption which teacher wrote it, with which prompt and settings
(see docs/security.md). Prompt templates are versioned here, never edited in place: a new
wording is a new version, so old provenance records keep meaning what they said.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field


class PromptTemplate(BaseModel):
    """A captioning instruction sent to the teacher with each image."""

    name: str
    """Stable name, e.g. "detailed"."""
    version: int
    """Bumped whenever the text changes."""
    text: str
    """The instruction itself."""

    @property
    def ref(self) -> str:
        return f"{self.name}-v{self.version}"


PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    template.ref: template
    for template in [
        PromptTemplate(
            name="detailed",
            version=1,
            text="Describe this image in one detailed paragraph: the main objects, their attributes, "
            "the setting and any visible text. Write complete sentences.",
        ),
        PromptTemplate(name="brief", version=1, text="Describe this image in one sentence."),
    ]
}
"""Known templates by ``name-vN``."""


def get_prompt_template(ref: str) -> PromptTemplate:
    """The template named ``ref`` ("detailed-v1"); a clear error lists the known ones."""
    try:
        return PROMPT_TEMPLATES[ref]
    except KeyError:
        raise ValueError(f"unknown prompt template {ref!r}; known: {sorted(PROMPT_TEMPLATES)}") from None


class BackendIdentity(BaseModel):
    """What determines a backend's output for a given image: the cache key and provenance base."""

    backend: str
    """Backend kind: source, hf or openai."""
    model_id: str
    """Model name or directory (for ``source``: "source")."""
    weights_sha256: str | None = None
    """Content hash of the model weights when known (hf: computed; openai: as the server reports)."""
    prompt_template: str | None = None
    """Template reference ``name-vN``; None for ``source``."""
    prompt_text: str | None = None
    """The exact instruction text sent."""
    decoding: dict[str, Any] = Field(default_factory=dict)
    """Decoding parameters (max_new_tokens, temperature, top_p, seed)."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible endpoint (openai backend only; never holds credentials)."""

    def fingerprint(self) -> str:
        """sha256 of everything above except the endpoint (the same model behind another URL is the same)."""
        payload = self.model_dump(mode="json", exclude={"endpoint"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def prompt_sha256(self) -> str:
        """sha256 of the exact instruction text ("" when the backend sends none)."""
        return hashlib.sha256((self.prompt_text or "").encode("utf-8")).hexdigest()


class CaptionProvenance(BackendIdentity):
    """Per-caption provenance record stored in the sample's ``caption_provenance``: the identity of
    the backend that wrote it (never its endpoint URL) and the run that wrote this version.

    It is part of the dataset's content, so it holds content only: no wall-clock time, path or host.
    The same input captioned by the same backend gives the same bytes in any platform home, so the
    dataset hash and every stage key after it reproduce. When a run happened lives beside the
    content (``CaptionRunResult.started_at`` in the version's manifest ``extra``, outside its hash)."""

    endpoint: None = Field(default=None, exclude=True)
    """Not recorded per caption: the same model behind another URL wrote the same caption."""
    caption_run_id: str | None = None
    """Id of the captioning run that wrote this version (a hash of input dataset and backend
    identity), also for captions served from the cache: which earlier run first produced a cached
    caption depends on a home's history, not on the content."""
    error: str | None = None
    """Why no caption was produced (then the sample's caption is null), else None."""

    @classmethod
    def from_identity(cls, identity: BackendIdentity, run_id: str | None, error: str | None = None) -> "CaptionProvenance":
        return cls(**identity.model_dump(exclude={"endpoint"}), caption_run_id=run_id, error=error)


__all__ = [
    "BackendIdentity",
    "CaptionProvenance",
    "PROMPT_TEMPLATES",
    "PromptTemplate",
    "get_prompt_template",
]
