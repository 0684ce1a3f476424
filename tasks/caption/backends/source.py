"""The ``source`` backend: keep each sample's own caption, normalised (unicode NFC, whitespace)."""

from __future__ import annotations

from tasks.caption.backends.base import CaptionBackend, CaptionInput, CaptionOutput
from tasks.caption.normalize import normalize_caption
from tasks.caption.provenance import BackendIdentity


class SourceCaptionBackend(CaptionBackend):
    cacheable = False

    def __init__(self, source_field: str = "caption") -> None:
        self.source_field = source_field

    @property
    def identity(self) -> BackendIdentity:
        return BackendIdentity(
            backend="source",
            model_id=f"source:{self.source_field}",
            decoding={"normalization": "NFC+whitespace"},
        )

    def caption_batch(self, inputs: list[CaptionInput]) -> list[CaptionOutput]:
        outputs = []
        for item in inputs:
            caption = normalize_caption(item.source_caption)
            outputs.append(CaptionOutput(caption or None, None if caption else "sample has no source caption"))
        return outputs


__all__ = ["SourceCaptionBackend"]
