"""Per-step metrics: ``metrics.jsonl`` in the output dir (other tasks read it), W&B, live progress lines.

One line per logged step::

    {"step": 12, "epoch": 0, "loss": ..., "ce_loss": ..., "alignment_loss": ... | null,
     "learning_rate": {"pel": ..., "llm": ...}, "grad_norm": ..., "samples_per_second": ...,
     "tokens_per_second": ..., "mfu": ... | null, "elapsed_seconds": ...}

Only rank 0 writes. On resume the file is cut back to the resumed step, so it always describes the
history that produced the current weights (a step that ran before a kill -9 and was re-run after
the resume appears once).

Progress goes to the job's log as throttled lines (``eve_model.training.progress``), never as a
progress bar: a log file or a Prefect log turns every redraw of a bar into a line.

W&B runs offline by default and keeps every directory under the platform home; nothing secret is
logged (the config holds no credentials; the API key stays in the environment). A retrain puts all
its stages in one W&B group with tags (recipe, stage, dataset hash); the input dataset and the final
model are W&B artifacts by reference (a URI plus the content hash in the metadata; nothing is
uploaded). Offline, W&B cannot mark an artifact as a run's input (``use_artifact`` needs the
server), so the dataset is logged by the run instead; ``wandb sync`` uploads both later.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from eve_model.training.progress import ProgressPrinter

# bf16 dense peak FLOP/s per device; MFU is reported only where the peak is known.
PEAK_BF16_FLOPS_BY_DEVICE = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def device_peak_flops(precision: str) -> float | None:
    """Peak FLOP/s of the current accelerator for ``precision``, or None (CPU, unknown GPU, fp32)."""
    import torch

    if not torch.cuda.is_available() or precision != "bf16":
        return None
    name = torch.cuda.get_device_name()
    for marker, peak in PEAK_BF16_FLOPS_BY_DEVICE.items():
        if marker in name:
            return peak
    return None


def truncate_jsonl_after(path: Path, step: int) -> None:
    """Keep only lines with ``"step" <= step`` (run on resume, before the first new line)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class WandbRunLabels(BaseModel):
    """Where a run sits in W&B besides its name."""

    group: str | None = None
    """The retrain's run name (one group per retrain)."""
    tags: list[str] = Field(default_factory=list)
    """Recipe, stage, dataset hash."""


class ArtifactReference(BaseModel):
    """A W&B artifact that points at data instead of holding it: the URI plus its content hash."""

    name: str
    """Artifact name (letters, digits, ``-``, ``_``, ``.``), e.g. ``dataset-<hash[:16]>``."""
    kind: str
    """W&B artifact type: ``dataset`` or ``model``."""
    uri: str
    """``file:///...`` or ``s3://...``; W&B stores the reference, never the bytes."""
    content_hash: str
    """The platform's identity of the content (dataset hash, weights hash)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """More identity (stage config hash, parent weights hash...)."""
    role: str = "output"
    """``input`` (the run read it) or ``output`` (the run wrote it)."""


def reference_uri(location: str) -> str:
    """A W&B reference URI for a local path or an ``s3://`` URL."""
    return location if "://" in location else Path(location).resolve().as_uri()


class MetricsLogger:
    """Writes step metrics on rank 0; a no-op elsewhere.

    W&B runs in a writer thread fed through a queue (``WandbWriter``): the training loop never
    waits for W&B and never sees its errors. Under SLURM, a cancel or requeue signals every
    process of the job, W&B's background service included; a dead service then makes W&B calls
    fail or block, and must not stop the checkpoint flush.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        rank: int,
        run_name: str,
        total_steps: int,
        start_step: int,
        wandb_mode: str,
        wandb_project: str,
        wandb_dir: Path,
        run_config: dict[str, Any],
        stage: str = "?",
        progress_interval_seconds: float = 10.0,
        wandb_labels: WandbRunLabels | None = None,
    ) -> None:
        self.enabled = rank == 0
        self.path = output_dir / "metrics.jsonl"
        self.progress = ProgressPrinter(stage, total_steps, start_step, progress_interval_seconds, enabled=self.enabled)
        self._wandb: WandbWriter | None = None
        if not self.enabled:
            return
        truncate_jsonl_after(self.path, start_step)
        if wandb_mode != "disabled":
            self._wandb = WandbWriter(run_name, wandb_mode, wandb_project, wandb_dir, output_dir, run_config,
                                      wandb_labels or WandbRunLabels())

    @property
    def wandb_run_id(self) -> str | None:
        return self._wandb.run_id if self._wandb is not None else None

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(metrics, sort_keys=True) + "\n")
        if self._wandb is not None:
            flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            for group, lr in (metrics.get("learning_rate") or {}).items():
                flat[f"learning_rate/{group}"] = lr
            self._wandb.submit("log", flat, metrics["step"])

    def step_done(self, step: int, loss: float | None, samples_per_second: float | None) -> None:
        """Report a finished step: a progress line when one is due (throttled)."""
        self.progress.step_done(step, loss, samples_per_second)

    def reference_artifact(self, reference: ArtifactReference) -> None:
        """Record a dataset or model in W&B by reference (no upload)."""
        if self._wandb is not None:
            self._wandb.submit("artifact", reference)

    def close(self, summary: dict[str, Any] | None = None, abandon_after_seconds: float | None = None) -> None:
        """Finish the W&B run. ``abandon_after_seconds``: give up waiting for W&B after this long
        (after a stop signal; the process then exits without it, and ``wandb sync`` still finds
        what the offline run wrote). None waits until W&B is done (the normal end of a stage)."""
        if self._wandb is not None:
            if summary:
                self._wandb.submit("summary", {k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self._wandb.finish(abandon_after_seconds)
            self._wandb = None


class WandbWriter:
    """W&B on a daemon thread: ``submit`` only enqueues; the first W&B error disables it (one
    warning on stderr) instead of reaching the training loop."""

    def __init__(self, run_name: str, mode: str, project: str, wandb_dir: Path, output_dir: Path, run_config: dict[str, Any],
                 labels: WandbRunLabels | None = None) -> None:
        # The id is stored next to the run's outputs so that a resumed job continues the same W&B run.
        id_file = output_dir / "wandb_run_id"
        self.run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        output_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run_id)
        self._queue: queue.Queue = queue.Queue()
        self._failed = False
        self._thread = threading.Thread(
            target=self._work, args=(run_name, mode, project, wandb_dir, run_config, labels or WandbRunLabels()),
            name="wandb-writer", daemon=True,
        )
        self._thread.start()

    def submit(self, kind: str, *payload: Any) -> None:
        if not self._failed:
            self._queue.put((kind, payload))

    def finish(self, abandon_after_seconds: float | None) -> None:
        self._queue.put(("finish", ()))
        self._thread.join(abandon_after_seconds)
        if self._thread.is_alive():
            print(f"[eve.train] W&B did not finish within {abandon_after_seconds} s; exiting without it "
                  "(its offline run keeps what it wrote)", file=sys.stderr, flush=True)

    def _work(self, run_name: str, mode: str, project: str, wandb_dir: Path, run_config: dict[str, Any],
              labels: WandbRunLabels) -> None:
        run = None
        try:
            run = _start_wandb(run_name, mode, project, wandb_dir, self.run_id, run_config, labels)
            while True:
                kind, payload = self._queue.get()
                if kind == "log":
                    run.log(payload[0], step=payload[1])
                elif kind == "summary":
                    for key, value in payload[0].items():
                        run.summary[key] = value
                elif kind == "artifact":
                    log_reference_artifact(run, payload[0])
                elif kind == "finish":
                    run.finish()
                    return
        except Exception as error:  # W&B is an observer: its failure must not stop training
            self._failed = True
            print(f"[eve.train] W&B disabled for the rest of this job: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)


def log_reference_artifact(run, reference: ArtifactReference) -> None:
    """Log ``reference`` to ``run``: an input through ``use_artifact`` when the run is online, else
    (offline, or an output) through ``log_artifact``; the content hash goes into the metadata."""
    import wandb

    artifact = wandb.Artifact(
        reference.name, type=reference.kind,
        metadata={"content_hash": reference.content_hash, "uri": reference.uri, **reference.metadata},
    )
    # checksum=False: W&B records the URI only; the content hash in the metadata is the identity
    # (hashing a multi-terabyte dataset again, or listing a bucket, is not W&B's job here).
    artifact.add_reference(reference.uri, checksum=False)
    if reference.role == "input" and not run.offline:
        run.use_artifact(artifact)
    else:
        run.log_artifact(artifact, aliases=[reference.content_hash[:16]])


_WANDB_DIRS_SET_HERE: dict[str, str] = {}
"""The W&B directory variables this process set itself (and to what), so a later run may replace them."""


def use_wandb_dir(wandb_dir: Path) -> None:
    """Keep every directory W&B writes (runs, cache, config, data, artifacts) under ``wandb_dir``, unless
    the environment already names them (a user's own choice wins); what this process set for an earlier
    run is replaced, so each run's files go under its own ``wandb_dir``. W&B prints nothing unless asked."""
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for variable, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        current = os.environ.get(variable)
        if current is None or current == _WANDB_DIRS_SET_HERE.get(variable):
            os.environ[variable] = _WANDB_DIRS_SET_HERE[variable] = str(wandb_dir / sub) if sub else str(wandb_dir)
    os.environ.setdefault("WANDB_SILENT", "true")


def fresh_wandb_setup() -> None:
    """Let the next ``wandb.init`` of this process start from the current environment.

    W&B keeps one setup per process: the settings it read when it was made (directories among them)
    and its connection to a service process, whose address it also leaves in ``WANDB_SERVICE``. A
    process that runs more than one W&B run, such as a flow that evaluates a candidate after other work,
    would otherwise write its later runs with the first run's settings, or fail to start them once that
    service has died. The teardown of a dead service raises (or exits with its code): either way the
    setup is already dropped, which is all this needs.

    A service address inherited from the process that started this one (a training job launched by a
    flow or a test process that had a W&B run) is dropped too: each process starts its own service
    rather than sending its runs through another process's, which may be gone or be writing elsewhere.
    """
    import wandb

    try:
        wandb.teardown()
    except (Exception, SystemExit):  # noqa: BLE001 - the old setup is gone either way
        pass
    os.environ.pop("WANDB_SERVICE", None)


def _start_wandb(run_name, mode, project, wandb_dir: Path, run_id: str, run_config, labels: WandbRunLabels | None = None):
    fresh_wandb_setup()
    use_wandb_dir(wandb_dir)
    os.environ["WANDB_MODE"] = mode
    import wandb

    labels = labels or WandbRunLabels()
    return wandb.init(
        project=project,
        name=run_name,
        group=labels.group,
        tags=labels.tags or None,
        id=run_id,
        resume="allow",
        dir=str(wandb_dir),
        config=run_config,
        mode=mode,
    )


__all__ = [
    "ArtifactReference",
    "MetricsLogger",
    "PEAK_BF16_FLOPS_BY_DEVICE",
    "WandbRunLabels",
    "device_peak_flops",
    "fresh_wandb_setup",
    "log_reference_artifact",
    "reference_uri",
    "truncate_jsonl_after",
    "use_wandb_dir",
]
