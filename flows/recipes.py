"""Named retrain recipes: functions that return complete, typed ``RetrainParameters``.

- ``demo``: the embedded default (bundled demo data, tiny EVE, 2 local gloo ranks, minutes on 2 CPU cores);
- ``paper_slurm`` / ``paper_k8s``: the paper's recipe (EVE-7B, batch 512/512/128, LR 4e-4/4e-5/2e-5,
  ZeRO-3, bf16) on 4 nodes x 8 GPUs of a SLURM or Kubernetes cluster.

``RECIPES`` maps the names used by the CLI and the deployments to these functions; every recipe
builds with its defaults (the cluster ones name placeholder paths to replace).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.data_flow import DataFlowParams
from flows.parameters import EvaluationParameters, RetrainParameters
from eve_model.training.config import StageId, StageOverrides
from tasks.caption.config import CaptionConfig
from tasks.data.sources import SourceSpec
from tasks.evaluate.gates import demo_gate_policy, paper_gate_policy
from tasks.platform import REPO_ROOT
from tasks.stages import TrainingParameters
from tasks.submit.k8s import KubernetesOptions, VolumeClaim
from tasks.submit.spec import JobSpec

_DEMO_BATCH = {"global_batch_size_samples": 16, "micro_batch_size_samples": 8}


def demo() -> RetrainParameters:
    """The embedded default: demo data, tiny EVE, 2 local gloo ranks, minutes on 2 CPU cores."""
    return RetrainParameters(
        recipe_name="demo",
        # The demo's "teacher VLM" output is the scene description shipped with the data; the noisy
        # alt-text stays in each sample as source_caption.
        captions=CaptionConfig(backend="source", source_field="true_caption"),
        training=TrainingParameters(
            cache_teacher_features=True,
            stage_overrides={
                StageId.BASE_LLM: StageOverrides(max_steps=120, **_DEMO_BATCH),
                # Measured on the demo (VQA, 200 held-out questions; stage runs side by side): the
                # paper's 40-step-scale stage 2 at 4e-4 never taught the LLM to read its visual block
                # (caption CE with the matching image 0.906 vs a shuffled one 0.89, VQA 0.255 = one
                # fixed answer per question type). With teacher features cached a step costs ~0.27 s,
                # so stage 2 can afford 500 steps at 2e-3: caption CE 0.49 vs 0.76 shuffled after 300,
                # VQA 0.34 (300/300 steps) -> 0.39 (500/400). Stage 1 at 1e-3: 4e-3 blew the visual
                # tokens up to ~130x the text-embedding norm.
                StageId.PREALIGN: StageOverrides(max_steps=60, learning_rates={"pel": 1e-3, "aligning": 1e-3},
                                                 **_DEMO_BATCH),
                StageId.PRETRAIN: StageOverrides(max_steps=500, warmup_ratio=0.03,
                                                 learning_rates={"pel": 2e-3, "aligning": 2e-3, "llm": 2e-3},
                                                 **_DEMO_BATCH),
                # SFT at a higher LR than the preset's paper ratio (120 steps at 2e-4 stayed below chance).
                StageId.SFT: StageOverrides(max_steps=400, learning_rates={"pel": 1e-3, "aligning": 1e-3, "llm": 1e-3},
                                            **_DEMO_BATCH),
            },
        ),
        evaluation=EvaluationParameters(gate=demo_gate_policy()),
    )


PAPER_DISTRIBUTED_ENV: dict[str, str] = {
    # NCCL and torch.distributed settings of the paper recipe (docs/cluster-runbook.md). Each can be
    # overridden per cluster through ``params.training.job.env`` (e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA).
    "NCCL_DEBUG": "WARN",  # one line per real problem in the job log, not per collective
    "NCCL_IB_DISABLE": "0",  # inter-node traffic over InfiniBand/RoCE verbs, never TCP sockets
    "NCCL_SOCKET_IFNAME": "^lo,docker0",  # bootstrap/out-of-band on the first real interface
    "NCCL_IB_HCA": "mlx5",  # the HCAs of A100 nodes (Mellanox ConnectX); name the ports if they differ
    "NCCL_NET_GDR_LEVEL": "PHB",  # GPUDirect RDMA when GPU and NIC share a PCIe host bridge
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",  # a failed collective ends the rank instead of hanging it
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",  # flight recorder: which collective each rank was in
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",  # ZeRO-3's changing buffer sizes fragment less
    "OMP_NUM_THREADS": "4",  # per rank: 8 ranks x 4 threads leave cores for loader workers
    "HF_HUB_OFFLINE": "1",  # nodes load the base LLM and the teacher from local directories only
    "TRANSFORMERS_OFFLINE": "1",
}
"""Environment of every rank of the paper recipe."""

PAPER_SHARED_ROOT = "/shared/eve"
"""Default shared filesystem of the paper recipe: platform home, datasets, checkpoints (every node)."""
PAPER_MODELS_ROOT = "/models"
"""Default read-only location of the base LLM and the CLIP teacher (every node)."""
PLACEHOLDER_IMAGE = "registry.example.com/eve-platform@sha256:" + "0" * 64
"""The training image by digest (replace): the platform's code at ``/opt/eve-platform`` and its
pinned environment with a CUDA build of torch."""


def _paper(
    backend: str,
    sources: list[SourceSpec],
    base_llm_dir: str,
    teacher_dir: str,
    image: str | None,
    shared_root: str,
    backend_options: dict[str, Any] | None = None,
    **job_options: Any,
) -> RetrainParameters:
    """The paper's recipe on 4 nodes x 8 A100-80GB; ``job_options`` are the backend's own.

    Flush timing: a ZeRO-3 checkpoint of EVE-7B (bf16 weights, fp32 master weights, Adam moments:
    ~95 GB) from 32 ranks is budgeted at 300 s, a step at up to 60 s; the signal lead, torchrun's
    shutdown timeout and the pod grace period are derived from these (``JobSpec.flush_seconds``),
    and the stage raises the save budget to 1.5x the longest save it measured. Checkpoints every
    hour of work (the release scripts' 7,813 steps are ~11 h).
    """
    hourly = StageOverrides(checkpoint_interval_minutes=60, data_loader_workers=4)  # the default hour, stated
    return RetrainParameters(
        recipe_name=f"paper-{backend}",
        data=DataFlowParams.paper("eve-cap", sources),
        evaluation=EvaluationParameters(gate=paper_gate_policy()),
        training=TrainingParameters(
            preset="eve_7b", backend=backend, base_llm_dir=base_llm_dir,
            backend_options=backend_options or {},
            stage_overrides={
                # The teacher is a local directory: the offline loader refuses a hub id.
                StageId.PREALIGN: hourly.model_copy(update={"model_overrides": {"teacher_path": teacher_dir}}),
                StageId.PRETRAIN: hourly,
                StageId.SFT: hourly.model_copy(update={"group_by_modality_length": True}),
            },
            job=JobSpec(
                name="eve-7b", command=["eve_model.train"], nodes=4, gpus_per_node=8, tasks_per_node=8,
                cpus_per_task=10, memory_gb=900, log_dir=Path(shared_root) / "logs", workdir=REPO_ROOT,
                container_image=image, exclusive=True, gpu_type="a100",
                checkpoint_save_seconds=300, max_step_seconds=60, max_resubmits=10,
                env={**PAPER_DISTRIBUTED_ENV, "EVE_HOME": f"{shared_root}/home"},
                **job_options,
            ),
        ),
    )


def paper_slurm(
    sources: list[SourceSpec] | None = None,
    base_llm_dir: str = f"{PAPER_MODELS_ROOT}/vicuna-7b-v1.5",
    teacher_dir: str = f"{PAPER_MODELS_ROOT}/clip-vit-large-patch14-336",
    partition: str = "gpu",
    image: str | None = PLACEHOLDER_IMAGE,
    runtime_environment: str | None = None,
    shared_root: str = PAPER_SHARED_ROOT,
    constraint: str | None = None,
) -> RetrainParameters:
    """The paper's recipe as SLURM jobs: 4 whole nodes x 8 A100, ZeRO-3, bf16, 48 h per attempt.

    The ranks run in ``image`` through pyxis/enroot (the shared root and the models mounted at the
    same paths), or with ``image=None`` in ``runtime_environment``, an environment on shared storage.
    ``constraint``: the site's node feature for 80 GB A100s, if it has one (e.g. ``a100_80gb``).
    """
    mounts = [f"--container-mounts={shared_root}:{shared_root},{PAPER_MODELS_ROOT}:{PAPER_MODELS_ROOT}:ro"]
    return _paper(
        "slurm", sources or [], base_llm_dir, teacher_dir, image, shared_root,
        partition=partition, constraint=constraint, time_limit_minutes=48 * 60,
        runtime_environment=runtime_environment, container_options=mounts if image else [],
    )


def paper_k8s(
    sources: list[SourceSpec] | None = None,
    base_llm_dir: str = f"{PAPER_MODELS_ROOT}/vicuna-7b-v1.5",
    teacher_dir: str = f"{PAPER_MODELS_ROOT}/clip-vit-large-patch14-336",
    image: str = PLACEHOLDER_IMAGE,
    shared_root: str = PAPER_SHARED_ROOT,
    shared_claim: str = "eve-shared",
    models_claim: str = "eve-models",
    queue_name: str | None = "eve-training",
) -> RetrainParameters:
    """The paper's recipe as PyTorchJobs: ReadWriteMany volumes at the paths the jobs use, A100 nodes
    by label with the GPU taint tolerated, gang-scheduled through ``queue_name``, RDMA NICs, no
    deadline (the platform resubmits after each flushed incident)."""
    options = KubernetesOptions(
        volumes=[
            VolumeClaim(name="shared", claim=shared_claim, mount_path=shared_root),
            VolumeClaim(name="models", claim=models_claim, mount_path=PAPER_MODELS_ROOT, read_only=True),
        ],
        eve_home=f"{shared_root}/home",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        queue_name=queue_name,
        rdma_resources={"rdma/rdma_shared_device_a": "1"},
    )
    return _paper(
        "k8s", sources or [], base_llm_dir, teacher_dir, image, shared_root,
        backend_options=options.model_dump(), time_limit_minutes=None,
    )


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_retrain_config(path: str | Path) -> RetrainParameters:
    """A retrain's parameters from a JSON or YAML file: either a whole ``RetrainParameters``, or a
    recipe with changes::

        recipe: paper-slurm            # a name of RECIPES
        arguments: {partition: a100}   # keyword arguments of the recipe function
        parameters:                    # merged into the recipe's parameters, key by key
          training: {job: {env: {NCCL_SOCKET_IFNAME: ib0}}}

    Raises ``ValueError`` naming the problem (unknown recipe, a field that does not exist).
    """
    import yaml

    text = Path(path).read_text()
    document = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of retrain parameters or a recipe")
    if "recipe" not in document:
        return RetrainParameters.model_validate(document)
    unknown = set(document) - {"recipe", "arguments", "parameters"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} next to 'recipe' (use arguments / parameters)")
    name = document["recipe"]
    if name not in RECIPES:
        raise ValueError(f"{path}: unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    base = RECIPES[name](**(document.get("arguments") or {}))
    changes = document.get("parameters") or {}
    return RetrainParameters.model_validate(_merge(json.loads(base.model_dump_json()), changes)) if changes else base


RECIPES: dict[str, Callable[..., RetrainParameters]] = {
    "demo": demo,
    "paper-slurm": paper_slurm,
    "paper-k8s": paper_k8s,
}
"""Recipe names (CLI, deployments) -> functions."""


__all__ = ["RECIPES", "demo", "load_retrain_config", "paper_k8s", "paper_slurm"]
