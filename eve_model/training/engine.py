"""The stage trainer: DeepSpeed set-up, the resumable step loop, the final model.

Order of a run (every rank), after the entry point (``eve_model/train.py``) has run
``eve_model.preflight.preflight_stage`` once (world size, batch split, init checkpoint, dataset
manifest + hash) and handed its result to ``StageTrainer``:
  1. (the entry point) skip the stage when ``final/`` already holds this config's result.
  2. build the stage model, freeze per stage, AdamW param groups with one LR per group, cosine
     schedule with warm-up, DeepSpeed engine from ``infra/deepspeed/zero<N>.json``.
  3. resume from ``checkpoints/latest`` if present (model, optimizer, scheduler, RNG, loader).
  4. step loop: micro-batches -> ``engine.backward`` / ``engine.step`` (DeepSpeed accumulates);
     metrics per step; checkpoint every ``checkpoint_interval_steps``; on SIGTERM/SIGUSR1 a
     checkpoint is flushed and the job exits ``ExitCode.REQUEUE``.
  5. ``final/``: HF directory (safetensors, tokenizer, processor, aligning layer, resolved config,
     final_metrics.json with input hashes), written to ``final.partial`` and renamed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from eve_model.exit_codes import ExitCode
from eve_model.identity import code_tree_revision, weights_sha256
from eve_model.preflight import StagePreflight
from eve_model.training.config import StageConfig, StageConfigError, StageId
from eve_model.training.runtime import DistributedEnv, platform_home

FINAL_DIR_NAME = "final"
FINAL_METRICS_NAME = "final_metrics.json"
HANG_AFTER_STEP_ENV = "EVE_TRAIN_HANG_AFTER_STEP"
"""Test-only fault injection: after this step every rank waits (until a signal arrives), so a drill
can kill -9 or SIGTERM the job at a known step."""
SLOW_SAVE_ENV = "EVE_TRAIN_SLOW_SAVE_SECONDS"
"""Test-only fault injection: every checkpoint save takes this many seconds longer (a drill shows
that a slow save still completes between the stop signal and the scheduler's kill)."""
SAVE_TIMINGS_PATH = "checkpoints/save_seconds.jsonl"
"""Under the output dir: one line per step checkpoint, ``{"step", "seconds"}`` (every rank done)."""
WANDB_CLOSE_ON_SIGNAL_SECONDS = 5.0
"""After a flush on a signal, how long W&B may take to finish before the job exits without it."""


def matmul_parameter_count(model) -> int:
    """Parameters that take part in a matrix multiply per token: every weight except the token
    embedding tables (a lookup) and the frozen teacher's (it runs once per image, not per token).
    The MFU numerator (6 x this x tokens) counts these. Under ZeRO-3 a parameter's full size is ``ds_numel``."""
    import torch

    embedding_weights = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    total = 0
    for name, parameter in model.named_parameters():
        if id(parameter) in embedding_weights or name.startswith("teacher.") or ".teacher." in name:
            continue
        total += int(getattr(parameter, "ds_numel", parameter.numel()))
    return total


def stage_is_complete(config: StageConfig) -> bool:
    """``<output_dir>/final`` holds the result of exactly this config (rerunning it is a no-op)."""
    metrics_file = Path(config.output_dir) / FINAL_DIR_NAME / FINAL_METRICS_NAME
    if not metrics_file.exists():
        return False
    recorded = json.loads(metrics_file.read_text())["inputs"]["stage_config_hash"]
    return recorded == config.content_hash()


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    """LR multiplier per scheduler step, as HF's ``get_cosine_schedule_with_warmup`` (EVE used it)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


def resolve_deepspeed_config(
    config: StageConfig, world_size: int, accumulation: int, hidden_size: int | None
) -> dict[str, Any]:
    """The DeepSpeed JSON template with batch sizes, precision and bucket sizes filled in."""
    if config.deepspeed_config_path:
        template = json.loads(Path(config.deepspeed_config_path).read_text())
    else:
        template = json.loads(
            resources.files("infra").joinpath("deepspeed", config.deepspeed_template_name()).read_text()
        )
    hidden = hidden_size or 1024
    fills = {
        "train_batch_size": config.global_batch_size_samples,
        "train_micro_batch_size_per_gpu": config.micro_batch_size_samples,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.max_grad_norm,
        "bf16.enabled": config.precision == "bf16",
        "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden,
    }

    def fill(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {k: fill(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}") for k, v in node.items()}
        if node == "auto":
            if prefix not in fills:
                raise StageConfigError(f"DeepSpeed config: no value to fill in for {prefix}='auto'")
            return fills[prefix]
        return node

    resolved = fill(template, "")
    # Values the stage config owns win over a hand-written JSON, so the two never disagree.
    resolved.update(
        train_batch_size=config.global_batch_size_samples,
        train_micro_batch_size_per_gpu=config.micro_batch_size_samples,
        gradient_accumulation_steps=accumulation,
    )
    resolved.setdefault("bf16", {})["enabled"] = config.precision == "bf16"
    zero = resolved.setdefault("zero_optimization", {})
    if zero.get("stage", config.zero_stage) != config.zero_stage:
        raise StageConfigError(
            f"deepspeed_config_path sets ZeRO stage {zero.get('stage')}, the stage config says {config.zero_stage}"
        )
    zero["stage"] = config.zero_stage
    return resolved


class StageTrainer:
    """One stage on one rank, after its preflight. ``run()`` returns the process exit code
    (``ExitCode.COMPLETED``, or ``ExitCode.REQUEUE`` after a pre-emption signal)."""

    def __init__(self, config: StageConfig, env: DistributedEnv, device_type: str, checked: StagePreflight) -> None:
        """``checked``: what ``eve_model.preflight.preflight_stage`` found for ``config`` on this rank."""
        self.config = config
        self.env = env
        self.device_type = device_type
        self.checked = checked
        self.output_dir = Path(config.output_dir)
        self.is_main = env.rank == 0

    # ---- set-up ---------------------------------------------------------------------------

    def _build(self, pre: StagePreflight) -> None:
        import deepspeed
        import torch

        from eve_model.training.checkpointing import CheckpointManager
        from eve_model.training.data import ResumableShardLoader
        from eve_model.training.stage_model import build_stage_model, eve_config_for_preset

        cfg = self.config
        hidden = eve_config_for_preset(cfg.model_preset, cfg.model_overrides).text_config.hidden_size
        self.ds_config = resolve_deepspeed_config(cfg, self.env.world_size, pre.gradient_accumulation_steps, hidden)
        self._hf_ds_config = None
        if cfg.zero_stage == 3 and cfg.stage != StageId.PREALIGN:
            # Alive while the model is built: transformers' from_pretrained then loads straight into
            # ZeRO-3 partitions under deepspeed.zero.Init (accelerate is pinned for it), so no rank
            # holds the whole model (tests/eve_model/test_training_zero3_loading.py).
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        elif cfg.zero_stage == 3 and self.is_main:
            # Stage 1 builds a fresh EVE around the base LLM (EveForCausalLM.from_text_model), which
            # copies the LLM's state dict into the new model and has no zero.Init path: under an
            # active HfDeepSpeedConfig it would copy from partitions and fail. Each rank builds it
            # whole on the host; deepspeed.initialize partitions it afterwards.
            print("[eve.train] stage 1 under ZeRO-3: the base LLM is loaded whole on each rank, then partitioned")
        torch.manual_seed(cfg.seed)
        self.stage_model = build_stage_model(cfg)
        model = self.stage_model.model

        if cfg.gradient_checkpointing:
            # On the decoder only: the PEL and PAL are small, and the teacher runs without gradients.
            getattr(model, "language_model", model).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        groups = self.stage_model.parameter_groups()
        for param in model.parameters():
            param.requires_grad_(False)
        param_groups = []
        for name in cfg.trainable_groups:
            params = groups[name]
            if not params:
                raise StageConfigError(f"parameter group {name!r} is empty for preset {cfg.model_preset}")
            for p in params:
                p.requires_grad_(True)
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            for suffix, members, wd in (("", decay, cfg.weight_decay), ("/no_decay", no_decay, 0.0)):
                if members:
                    param_groups.append({"params": members, "lr": cfg.learning_rates[name], "weight_decay": wd, "name": name + suffix})
        self.group_names = [g["name"] for g in param_groups]
        self.matmul_parameters = matmul_parameter_count(model)
        optimizer = torch.optim.AdamW(param_groups, betas=cfg.adam_betas, eps=cfg.adam_epsilon)
        factor = cosine_with_warmup(cfg.warmup_steps(pre.total_steps), pre.total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
            config=self.ds_config,
        )
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self._needs_manual_grad_norm = cfg.zero_stage == 0 and cfg.precision == "fp32"
        self.loader = ResumableShardLoader(
            cfg.dataset_location,
            pre.manifest,
            seed=cfg.seed,
            shuffle_block_shards=cfg.shuffle_block_shards,
            global_batch_size_samples=cfg.global_batch_size_samples,
            micro_batch_size_samples=cfg.micro_batch_size_samples,
            rank=self.env.rank,
            world_size=self.env.world_size,
            group_by_modality_length=cfg.group_by_modality_length,
            index_cache_dir=str(platform_home() / "cache" / "shard-index"),
        )
        self.checkpoints = CheckpointManager(self.output_dir, self.env.rank, cfg.keep_last_checkpoints)

    def _resume(self) -> int:
        import torch.distributed as dist

        self.checkpoints.discard_incomplete()
        dist.barrier()
        tag = self.checkpoints.latest_tag()
        if tag is None:
            return 0
        state = self.checkpoints.load(self.engine, tag)
        if state.config_hash != self.config.content_hash():
            raise StageConfigError(
                f"{self.checkpoints.root / tag} was written by a different stage config "
                f"(hash {state.config_hash[:12]} vs {self.config.content_hash()[:12]}); use a new output_dir"
            )
        completed = self.loader.completed_steps_at(state.loader_position)
        if completed != state.completed_steps:
            raise RuntimeError(f"checkpoint {tag}: loader position {state.loader_position} != step {state.completed_steps}")
        return completed

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        import torch.distributed as dist

        from eve_model.training.data import prepared_steps
        from eve_model.training.metrics_logging import ArtifactReference, MetricsLogger, WandbRunLabels, reference_uri
        from eve_model.training.signals import PreemptionWatcher

        _no_progress_bars()
        watcher = PreemptionWatcher().install()
        pre = self.checked
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.config.write(self.output_dir / "stage_config.json")
            self.init_weights_sha256 = weights_sha256(self.config.init_checkpoint) if self.config.init_checkpoint else None
        self._build(pre)
        start_step = self._resume()
        if start_step and self.is_main:
            print(f"[eve.train] resumed at step {start_step} from {self.checkpoints.root / self.checkpoints.latest_tag()}", flush=True)
        self.total_steps = pre.total_steps
        self.logger = MetricsLogger(
            self.output_dir,
            rank=self.env.rank,
            run_name=self.config.run_name,
            total_steps=pre.total_steps,
            start_step=start_step,
            wandb_mode=self.config.wandb_mode,
            wandb_project=self.config.wandb_project,
            wandb_dir=Path(self.config.wandb_dir) if self.config.wandb_dir else platform_home() / "wandb",
            run_config={**self.config.to_json_dict(), "deepspeed": self.ds_config, "world_size": self.env.world_size},
            stage=str(self.config.stage),
            progress_interval_seconds=self.config.progress_interval_seconds,
            wandb_labels=WandbRunLabels(group=self.config.wandb_group, tags=list(self.config.wandb_tags)),
        )
        self.logger.reference_artifact(ArtifactReference(
            name=f"dataset-{pre.manifest.dataset_hash[:16]}", kind="dataset", role="input",
            uri=reference_uri(self.config.dataset_location), content_hash=pre.manifest.dataset_hash,
            metadata={"num_items": pre.manifest.num_items},
        ))
        order_log = self.output_dir / f"data_order.rank{self.env.rank}.jsonl"
        if self.config.record_data_order:
            from eve_model.training.metrics_logging import truncate_jsonl_after

            self.output_dir.mkdir(parents=True, exist_ok=True)
            truncate_jsonl_after(order_log, start_step)
        hang_after = int(os.environ.get(HANG_AFTER_STEP_ENV, "0") or 0)
        peak_flops = _peak_flops(self.config.precision)

        step = start_step
        last_saved = start_step
        last_saved_at = time.monotonic()
        history: list[dict[str, Any]] = []
        self._run_started = time.perf_counter()
        steps = prepared_steps(
            self.loader, self.stage_model.collate, start_step, pre.total_steps,
            workers=self.config.data_loader_workers, prefetch_steps=self.config.data_prefetch_steps,
            pin_memory=self.device_type == "cuda",
        )
        while True:
            waited = time.perf_counter()
            prepared = next(steps, None)
            if prepared is None:
                break
            step = prepared.step
            metrics = self._train_step(prepared, peak_flops, data_wait_seconds=time.perf_counter() - waited)
            history.append(metrics)
            if self.config.record_data_order:
                with order_log.open("a") as handle:
                    handle.write(json.dumps({"step": step, "keys": [k for mb in prepared.micro_batches for k in mb.keys]}) + "\n")
            if step % self.config.log_interval_steps == 0 or step == pre.total_steps:
                self.logger.log(metrics)
            self.logger.step_done(step, metrics["loss"], metrics["samples_per_second"])
            if step % self.config.checkpoint_interval_steps == 0 and step < pre.total_steps:
                self._save(step, prepared.position_after)
                last_saved, last_saved_at = step, time.monotonic()
            if hang_after and step == hang_after:
                while not watcher.requested:
                    time.sleep(0.05)
            # One collective per step decides, identically on every rank, whether a stop signal
            # arrived anywhere and whether rank 0's checkpoint clock ran out.
            interval = self.config.checkpoint_interval_minutes
            time_due = interval is not None and self.is_main and time.monotonic() - last_saved_at >= interval * 60
            stop, save_due = watcher.agreed_across_ranks(extra_flags=(time_due,))
            if last_saved != step and (stop or (save_due and step < pre.total_steps)):
                self._save(step, prepared.position_after)
                last_saved, last_saved_at = step, time.monotonic()
            if stop:
                if self.is_main:
                    print(f"[eve.train] signal received: checkpoint at step {step} written; "
                          f"exiting {ExitCode.describe(ExitCode.REQUEUE)}", flush=True)
                # Never waits on W&B: its background process may have died with the same signal.
                self.logger.close(abandon_after_seconds=WANDB_CLOSE_ON_SIGNAL_SECONDS)
                watcher.uninstall()
                return ExitCode.REQUEUE
        self._finalize(step, history)
        watcher.uninstall()
        dist.barrier()
        return ExitCode.COMPLETED

    def _train_step(self, prepared, peak_flops: float | None, data_wait_seconds: float = 0.0) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        started = time.perf_counter()
        lrs: dict[str, float] = {}
        for group in self.engine.optimizer.param_groups:
            lrs.setdefault(group.get("name", "group").split("/")[0], group["lr"])
        totals = torch.zeros(5, dtype=torch.float64)  # loss, ce, alignment, tokens, micro-batches
        has_alignment = False
        manual_grad_norm = None
        for index, micro in enumerate(prepared.micro_batches):
            batch = {k: v.to(self.engine.device, non_blocking=True) if hasattr(v, "to") else v for k, v in micro.batch.items()}
            output = self.stage_model.forward(self.engine, batch)
            self.engine.backward(output.loss)
            if index == len(prepared.micro_batches) - 1 and self._needs_manual_grad_norm:
                # ZeRO-0 fp32 does not record the norm it clips with; the gradients are already
                # all-reduced at the accumulation boundary, so the local norm is the global one.
                manual_grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in self._trainable if p.grad is not None]))
            self.engine.step()
            totals[0] += float(output.loss.detach())
            totals[1] += float(output.ce_loss)
            if output.alignment_loss is not None:
                has_alignment = True
                totals[2] += float(output.alignment_loss)
            totals[3] += self.stage_model.count_tokens(batch)
            totals[4] += 1
        grad_norm = manual_grad_norm if self._needs_manual_grad_norm else self.engine.get_global_grad_norm()
        if dist.is_initialized() and dist.get_world_size() > 1:
            device_totals = totals.to(self.engine.device) if self.device_type == "cuda" else totals
            dist.all_reduce(device_totals)
            totals = device_totals.cpu()
        seconds = time.perf_counter() - started
        micro_batches = float(totals[4])
        tokens = float(totals[3])
        samples_per_second = self.config.global_batch_size_samples / seconds
        tokens_per_second = tokens / seconds
        return {
            "step": prepared.step,
            "epoch": (prepared.step - 1) // self.loader.steps_per_epoch,
            "loss": float(totals[0]) / micro_batches,
            "ce_loss": float(totals[1]) / micro_batches,
            "alignment_loss": float(totals[2]) / micro_batches if has_alignment else None,
            "learning_rate": lrs,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "samples_per_second": samples_per_second,
            "tokens_per_second": tokens_per_second,
            # Model FLOPs utilisation: 6 x matmul parameters x tokens (forward + backward; the embedding
            # lookup is no matmul and is left out; attention's score FLOPs are not counted either).
            "mfu": (6 * self.matmul_parameters * tokens_per_second / (peak_flops * self.env.world_size)) if peak_flops else None,
            "step_seconds": seconds,
            # Time the step waited for its data (reading, decoding, collating not done ahead).
            "data_wait_seconds": data_wait_seconds,
            "data_wait_share": data_wait_seconds / (seconds + data_wait_seconds),
            "elapsed_seconds": time.perf_counter() - self._run_started,
        }

    def _save(self, step: int, position) -> None:
        """A step checkpoint; its duration (all ranks) is appended to ``SAVE_TIMINGS_PATH``, from
        which the platform derives the next attempt's flush timing."""
        import torch.distributed as dist

        from eve_model.training.checkpointing import TrainerState

        started = time.monotonic()
        slow_save = float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)
        if slow_save:
            time.sleep(slow_save)
        self.checkpoints.save(
            self.engine,
            TrainerState(completed_steps=step, loader_position=position, config_hash=self.config.content_hash(), world_size=self.env.world_size),
        )
        if dist.is_initialized():
            dist.barrier()
        if self.is_main:
            timings = self.output_dir / SAVE_TIMINGS_PATH
            with timings.open("a") as handle:
                handle.write(json.dumps({"step": step, "seconds": round(time.monotonic() - started, 3)}) + "\n")

    # ---- the end of a stage ---------------------------------------------------------------

    def _full_state_dict(self):
        """The full (unpartitioned) state dict on rank 0; a collective under ZeRO-3."""
        if self.config.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict() if self.is_main else None

    def _finalize(self, step: int, history: list[dict[str, Any]]) -> None:
        from eve_model.training.metrics_logging import ArtifactReference, reference_uri

        state_dict = self._full_state_dict()
        if self.is_main:
            final_dir = self.output_dir / FINAL_DIR_NAME
            partial = self.output_dir / (FINAL_DIR_NAME + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            self.stage_model.save_final(partial, {k: v.detach().cpu() for k, v in state_dict.items()})
            self.config.write(partial / "stage_config.json")
            (partial / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2))
            # The whole run's history, including steps before a resume (metrics.jsonl was cut back to the
            # resumed step, so it holds each step once).
            logged = self.output_dir / "metrics.jsonl"
            if logged.exists():
                history = [json.loads(line) for line in logged.read_text().splitlines() if line.strip()]
            tail = history[-max(1, len(history) // 10):] if history else []
            summary = {
                "stage": self.config.stage,
                "run_name": self.config.run_name,
                "completed_steps": step,
                "total_steps": self.total_steps,
                "world_size": self.env.world_size,
                "final": {
                    "loss": history[-1]["loss"] if history else None,
                    "ce_loss": history[-1]["ce_loss"] if history else None,
                    "alignment_loss": history[-1]["alignment_loss"] if history else None,
                    "loss_tail_mean": sum(m["loss"] for m in tail) / len(tail) if tail else None,
                    "samples_per_second_mean": sum(m["samples_per_second"] for m in history) / len(history) if history else None,
                    "tokens_per_second_mean": sum(m["tokens_per_second"] for m in history) / len(history) if history else None,
                },
                "inputs": {
                    "dataset_location": self.config.dataset_location,
                    "dataset_hash": self.loader.order.manifest.dataset_hash,
                    "init_checkpoint": self.config.init_checkpoint,
                    "init_weights_sha256": self.init_weights_sha256,
                    "stage_config_hash": self.config.content_hash(),
                    "code_revision": code_tree_revision(),
                },
                "weights_sha256": weights_sha256(partial),
                "wandb_run_id": self.logger.wandb_run_id,
                "checkpoints_dir": str(self.checkpoints.root),
            }
            (partial / FINAL_METRICS_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True))
            shutil.rmtree(final_dir, ignore_errors=True)
            partial.rename(final_dir)
            self.logger.reference_artifact(ArtifactReference(
                name=f"eve-stage-{self.config.stage}", kind="model", role="output", uri=reference_uri(str(final_dir)),
                content_hash=summary["weights_sha256"],
                metadata={"stage": str(self.config.stage), "stage_config_hash": summary["inputs"]["stage_config_hash"],
                          "dataset_hash": summary["inputs"]["dataset_hash"],
                          "init_weights_sha256": summary["inputs"]["init_weights_sha256"]},
            ))
            self.logger.close(summary["final"])
            print(f"[eve.train] stage {self.config.stage} complete after {step} steps: {final_dir}")
        else:
            self.logger.close()


def _no_progress_bars() -> None:
    """Library progress bars (transformers' "Writing model shards", the hub's downloads) off: in a job's log
    every redraw is a line; the job reports its own progress (``eve_model.training.progress``)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    disable_progress_bars()


def _peak_flops(precision: str) -> float | None:
    from eve_model.training.metrics_logging import device_peak_flops

    return device_peak_flops(precision)


__all__ = [
    "FINAL_DIR_NAME",
    "FINAL_METRICS_NAME",
    "HANG_AFTER_STEP_ENV",
    "StageTrainer",
    "cosine_with_warmup",
    "resolve_deepspeed_config",
    "stage_is_complete",
]
