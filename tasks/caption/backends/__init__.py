"""Caption backends behind one interface (``base.CaptionBackend``): source, hf, openai."""

from __future__ import annotations

from tasks.caption.backends.base import CaptionBackend, CaptionBackendError, CaptionInput, CaptionOutput
from tasks.caption.config import CaptionConfig
from tasks.caption.provenance import get_prompt_template


def build_backend(config: CaptionConfig) -> CaptionBackend:
    """The backend a config names (heavy libraries are imported only by the one chosen)."""
    template = get_prompt_template(config.prompt_template)
    if config.backend == "source":
        from tasks.caption.backends.source import SourceCaptionBackend

        return SourceCaptionBackend(source_field=config.source_field)
    if config.backend == "hf":
        from tasks.caption.backends.hf import HFCaptionBackend

        return HFCaptionBackend(config.model, template, config.decoding(), device=config.device)
    from tasks.caption.backends.openai import OpenAICaptionBackend

    return OpenAICaptionBackend(
        endpoint_url=config.endpoint_url,
        model=config.model,
        template=template,
        decoding=config.decoding(),
        api_key_env=config.api_key_env,
        concurrency=config.concurrency,
        request_timeout_seconds=config.request_timeout_seconds,
        max_retries=config.max_retries,
        backoff_initial_seconds=config.backoff_initial_seconds,
        backoff_max_seconds=config.backoff_max_seconds,
    )


__all__ = ["CaptionBackend", "CaptionBackendError", "CaptionInput", "CaptionOutput", "build_backend"]
