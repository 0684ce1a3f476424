"""Training of the EVE stages (and the tiny base-LLM bootstrap) as resumable DeepSpeed jobs.

Entry point: ``python -m eve_model.train <stage_config.json>`` (see ``eve_model/train.py``).

- ``config``: ``StageConfig`` (typed, JSON) and the ``tiny`` / ``eve_7b`` presets per stage.
- ``data``: deterministic, rank-sharded, resumable sample order over ``eve_model.shards`` datasets.
- ``engine``: DeepSpeed set-up, the step loop, the final HF directory (after ``eve_model.preflight``).
- ``checkpointing``: step checkpoints (DeepSpeed + JSON trainer state + per-rank RNG).
- ``signals``: SIGTERM/SIGUSR1 -> checkpoint -> ``ExitCode.REQUEUE`` ("requeue me").
- ``metrics_logging``: metrics.jsonl, W&B (offline by default; grouped per retrain, artifacts by reference).
- ``progress``: the throttled progress lines a job prints and the platform parses.
- ``stage_model`` / ``base_llm``: the model adapters (EVE stages 1-3; plain Llama bootstrap).
- ``runtime``: launcher discovery (torchrun / srun / none), accelerator env, process group.
"""
