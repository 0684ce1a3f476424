"""Parameters of a captioning run (a flow parameter: Prefect validates it and draws its form)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tasks.caption.provenance import PROMPT_TEMPLATES


class CaptionConfig(BaseModel):
    """Which teacher captions the images, how, and how hard to retry."""

    backend: Literal["source", "hf", "openai"] = "source"
    """source: keep the source caption (normalised); hf: a local model directory; openai: an
    OpenAI-compatible chat-completions endpoint."""

    source_field: str = "caption"
    """source: the metadata field whose text is kept. The demo data carries ``true_caption``, a
    scene description standing in for a teacher VLM's output (no VLM runs offline here)."""

    model: str | None = None
    """hf: the model directory; openai: the model name sent to the endpoint. Unused for source."""

    endpoint_url: str | None = None
    """openai: base URL up to and including /v1, e.g. http://127.0.0.1:8000/v1."""

    api_key_env: str = "OPENAI_API_KEY"
    """openai: name of the environment variable holding the API key (the key itself is never a parameter)."""

    prompt_template: str = "detailed-v1"
    """Prompt template reference (``tasks.caption.provenance.PROMPT_TEMPLATES``)."""

    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    """Longest caption, in model tokens."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """0 means greedy decoding (reproducible); above 0 samples."""

    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (only with temperature > 0)."""

    seed: int | None = None
    """Sampling seed sent with each request (only with temperature > 0)."""

    batch_size: int = Field(default=8, ge=1)
    """hf: images per generate call; openai: requests handed to the worker pool at once."""

    concurrency: int = Field(default=4, ge=1, le=256)
    """openai: most requests in flight."""

    request_timeout_seconds: float = Field(default=60.0, gt=0)
    """openai: timeout of one HTTP request."""

    max_retries: int = Field(default=6, ge=0)
    """openai: retries of a request after a connection error, timeout, 429 or 5xx."""

    backoff_initial_seconds: float = Field(default=0.5, gt=0)
    """openai: first retry delay; doubles per retry (with jitter)."""

    backoff_max_seconds: float = Field(default=30.0, gt=0)
    """openai: cap on one retry delay."""

    device: str = "cpu"
    """hf: torch device of the model ("cpu", "cuda")."""

    use_cache: bool = True
    """Reuse cached captions (keyed by image hash + prompt + model + decoding) and store new ones."""

    @model_validator(mode="after")
    def _check(self) -> "CaptionConfig":
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"unknown prompt_template {self.prompt_template!r}; known: {sorted(PROMPT_TEMPLATES)}")
        if self.backend in ("hf", "openai") and not self.model:
            raise ValueError(f"backend {self.backend!r} needs 'model'")
        if self.backend == "openai" and not self.endpoint_url:
            raise ValueError("backend 'openai' needs 'endpoint_url'")
        return self

    def decoding(self) -> dict:
        """Decoding parameters as recorded in provenance (sampling fields only when sampling)."""
        params: dict = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        if self.temperature > 0:
            params |= {"top_p": self.top_p, "seed": self.seed}
        return params


__all__ = ["CaptionConfig"]
