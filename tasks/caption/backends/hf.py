"""The ``hf`` backend: a local checkpoint directory captions images in batches on this machine.

Our own EVE checkpoints are valid teachers (``eve_model.serving.VisionTextGenerator`` loads them),
so a trained EVE can re-caption the next version's data. Images that cannot be decoded get a
per-image error instead of failing the batch.
"""

from __future__ import annotations

from pathlib import Path

from tasks.caption.backends.base import CaptionBackend, CaptionBackendError, CaptionInput, CaptionOutput
from tasks.caption.provenance import BackendIdentity, PromptTemplate


class HFCaptionBackend(CaptionBackend):
    def __init__(self, model_dir: str | Path, template: PromptTemplate, decoding: dict, device: str = "cpu") -> None:
        from eve_model.serving import ImageInputError, VisionTextGenerator

        if not (Path(model_dir) / "config.json").is_file():
            raise CaptionBackendError(f"{model_dir} is not a model directory (no config.json)")
        self._generator = VisionTextGenerator(model_dir, device=device)
        self._image_error = ImageInputError
        self._template = template
        self._decoding = decoding
        self._identity = BackendIdentity(
            backend="hf",
            model_id=str(Path(model_dir).resolve()),
            weights_sha256=self._generator.weights_sha256,
            prompt_template=template.ref,
            prompt_text=template.text,
            decoding=decoding,
        )

    @property
    def identity(self) -> BackendIdentity:
        return self._identity

    def caption_batch(self, inputs: list[CaptionInput]) -> list[CaptionOutput]:
        from eve_model.serving import GenerationRequest

        outputs: list[CaptionOutput | None] = [None] * len(inputs)
        requests, positions = [], []
        prompt = self._generator.chat_prompt([("user", self._template.text)], has_image=True)
        for position, item in enumerate(inputs):
            if item.image_bytes is None:
                outputs[position] = CaptionOutput(None, "sample has no image")
                continue
            try:
                self._generator.decode_image(item.image_bytes)
            except self._image_error as error:
                outputs[position] = CaptionOutput(None, str(error))
                continue
            requests.append(GenerationRequest(
                prompt=prompt,
                image=item.image_bytes,
                max_new_tokens=self._decoding["max_new_tokens"],
                temperature=self._decoding["temperature"],
                top_p=self._decoding.get("top_p", 1.0),
                seed=self._decoding.get("seed"),
            ))
            positions.append(position)
        if requests:
            for position, result in zip(positions, self._generator.generate(requests)):
                outputs[position] = CaptionOutput(result.text.strip() or None, None if result.text.strip() else "empty generation")
        return outputs  # type: ignore[return-value]


__all__ = ["HFCaptionBackend"]
