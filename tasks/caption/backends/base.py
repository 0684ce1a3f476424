"""The one interface every caption backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from tasks.caption.provenance import BackendIdentity


class CaptionBackendError(RuntimeError):
    """The backend cannot caption at all right now (endpoint down after retries, model missing).

    Distinct from a per-image failure, which is returned as ``CaptionOutput.error``: a run stops
    on this error (and resumes later), but records per-image errors and carries on.
    """


@dataclass
class CaptionInput:
    """One image to caption."""

    key: str
    image_bytes: bytes | None
    image_ext: str | None
    image_sha256: str
    source_caption: str | None


@dataclass
class CaptionOutput:
    """A caption, or the reason there is none (``caption`` is then None)."""

    caption: str | None
    error: str | None = None


class CaptionBackend(ABC):
    """Captions batches of images; ``identity`` says everything that determines its output."""

    cacheable: bool = True
    """Whether results may be cached (the source backend has nothing worth caching)."""

    @property
    @abstractmethod
    def identity(self) -> BackendIdentity: ...

    @abstractmethod
    def caption_batch(self, inputs: list[CaptionInput]) -> list[CaptionOutput]:
        """One output per input, same order."""

    def close(self) -> None:
        """Release clients, threads or models."""


__all__ = ["CaptionBackend", "CaptionBackendError", "CaptionInput", "CaptionOutput"]
