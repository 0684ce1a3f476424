"""Run evaluation suites on an HF EVE model directory: batched greedy decoding, with progress.

    from tasks.evaluate.harness import HarnessConfig, evaluate_model_dir
    from tasks.evaluate.suites import VqaSuite
    report = evaluate_model_dir("runs/x/stage3/final", [VqaSuite(name="demo_vqa", path="data/demo/eval/questions.jsonl")])
    report.save("eval.json")

Or from the shell: ``eve evaluate MODEL_DIR --suite vqa=data/demo/eval/questions.jsonl``.

The model sits behind a small protocol (``VisionLanguageModel``: ``generate`` and ``text_nll``), so
suites are scored the same way for the HF model here and for any stand-in in tests.
"""

from __future__ import annotations

import io
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tasks.evaluate import readers
from eve_model.identity import weights_sha256
from tasks.evaluate.report import EvaluationReport, SuiteResult
from tasks.evaluate.suites import (
    GENERATION_KINDS,
    PerplexitySuite,
    SuiteSpec,
    load_benchmark,
    prompt_for,
    score_generations,
    score_perplexity,
)

logger = logging.getLogger(__name__)


class HarnessConfig(BaseModel):
    """How suites are run (a flow parameter)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    batch_size: int = Field(default=8, ge=1)
    """Items per generate/forward call."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Greedy decoding budget (EVE's eval scripts use 128)."""
    template: str = "vicuna_v1"
    """Prompt template of ``EveProcessor.prompt`` (``plain`` for stage-1/2 caption models)."""
    seed: int = 0
    """torch seed set before each suite (greedy decoding is deterministic; this pins any tie-breaks)."""
    device: str = "cpu"
    """torch device for the model (``cuda`` on a GPU node)."""
    show_progress: bool = True
    """tqdm progress bars on stderr."""


class VisionLanguageModel(Protocol):
    def generate(self, images: list[Any], prompts: list[str], max_new_tokens: int, template: str) -> list[str]:
        """Greedy answers for a batch of (PIL image or None, question) pairs."""

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        """Per text: (sum of next-token NLLs in nats, number of scored tokens)."""


class EveModel:
    """``VisionLanguageModel`` over an HF EVE directory (``EveForCausalLM`` + ``EveProcessor``)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        import torch

        from eve_model import EveForCausalLM, EveProcessor

        self.model_dir = Path(model_dir)
        self.processor = EveProcessor.from_pretrained(self.model_dir)
        self.model = EveForCausalLM.from_pretrained(self.model_dir).to(device).eval()
        self.device = torch.device(device)

    def generate(self, images: list[Any], prompts: list[str], max_new_tokens: int, template: str) -> list[str]:
        import torch

        texts = [
            self.processor.prompt(prompt, template=template, with_image=image is not None)
            for image, prompt in zip(images, prompts, strict=True)
        ]
        batch = self.processor.for_generation(images, texts)
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            sequences = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        # generate returns prompt + new tokens (transformers' decoder-only convention); keep the answer.
        return self.processor.batch_decode(sequences[:, batch["input_ids"].shape[1]:])

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        import torch
        import torch.nn.functional as F

        tokenizer = self.processor.tokenizer
        rows = [
            [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"][: self.processor.max_length - 1]
            for text in texts
        ]
        width = max(len(row) for row in rows)
        pad = self.processor.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=self.device)
        attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (B, T, V)
        # Token t is predicted from positions < t; the BOS itself is never scored.
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, T-1)
        scored = attention_mask[:, 1:].bool()
        return [
            (float(nll[row][scored[row]].sum()), int(scored[row].sum()))
            for row in range(len(rows))
        ]


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="item", disable=not enabled, file=sys.stderr)


def _open_image(item: readers.EvalItem):
    from PIL import Image

    data = item.read_image_bytes()
    if data is None:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise readers.BenchmarkFormatError(f"{item.source}: image cannot be decoded ({exc})") from exc
    return image


def run_suite(
    model: VisionLanguageModel,
    spec: SuiteSpec,
    config: HarnessConfig | None = None,
    benchmark: readers.Benchmark | None = None,
) -> SuiteResult:
    """Read (unless given) and run one suite; every item gets exactly one model output."""
    config = config or HarnessConfig()
    benchmark = benchmark if benchmark is not None else load_benchmark(spec)
    _seed(config.seed)
    items = benchmark.items
    batches = [items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    template = spec.template or config.template
    max_new_tokens = spec.max_new_tokens or config.max_new_tokens
    settings = {"batch_size": config.batch_size, "seed": config.seed, "template": template}
    if benchmark.skipped:
        logger.warning("suite %s: %d invalid item(s) skipped, e.g. %s: %s", spec.name, len(benchmark.skipped),
                       benchmark.skipped[0].source, benchmark.skipped[0].reason)
    with _progress(len(items), spec.name, config.show_progress) as bar:
        if isinstance(spec, PerplexitySuite):
            nll: list[tuple[float, int]] = []
            for batch in batches:
                nll.extend(model.text_nll([item.text or "" for item in batch]))
                bar.update(len(batch))
            return score_perplexity(spec, benchmark, nll, settings)
        if spec.kind not in GENERATION_KINDS:
            raise TypeError(f"suite {spec.name}: unsupported kind {spec.kind!r}")
        predictions: list[str] = []
        for batch in batches:
            images = [_open_image(item) for item in batch]
            predictions.extend(model.generate(images, [prompt_for(spec, i) for i in batch], max_new_tokens, template))
            bar.update(len(batch))
    settings["max_new_tokens"] = max_new_tokens
    return score_generations(spec, benchmark, predictions, settings)


def _seed(seed: int) -> None:
    try:
        import torch
    except ImportError:  # stand-in models in tests need no torch
        return
    torch.manual_seed(seed)


def evaluate_model(
    model: VisionLanguageModel,
    model_dir: str | Path,
    suites: Sequence[SuiteSpec],
    config: HarnessConfig | None = None,
    benchmarks: dict[str, readers.Benchmark] | None = None,
) -> EvaluationReport:
    """Run every suite on an already loaded model; all benchmarks are read (and validated) first,
    so a bad file fails before any model time is spent."""
    config = config or HarnessConfig()
    names = [spec.name for spec in suites]
    if len(set(names)) != len(names):
        raise ValueError(f"suite names must be unique, got {names}")
    benchmarks = dict(benchmarks or {})
    for spec in suites:
        if spec.name not in benchmarks:
            benchmarks[spec.name] = load_benchmark(spec)
    report = EvaluationReport(
        model_dir=str(model_dir), weights_sha256=weights_sha256(model_dir), seeds={"torch": config.seed}
    )
    for spec in suites:
        result = run_suite(model, spec, config, benchmarks[spec.name])
        report.suites[spec.name] = result
        logger.info("suite %s: %s", spec.name,
                    ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if math.isfinite(v)))
    return report


def evaluate_model_dir(
    model_dir: str | Path,
    suites: Sequence[SuiteSpec],
    config: HarnessConfig | None = None,
    benchmarks: dict[str, readers.Benchmark] | None = None,
) -> EvaluationReport:
    """Load an HF EVE directory and run ``suites`` on it (see ``evaluate_model``)."""
    config = config or HarnessConfig()
    benchmarks = dict(benchmarks or {})
    for spec in suites:  # validate inputs before paying for the model load
        if spec.name not in benchmarks:
            benchmarks[spec.name] = load_benchmark(spec)
    model = EveModel(model_dir, device=config.device)
    return evaluate_model(model, model_dir, suites, config, benchmarks)
