"""Named retrain recipes, and the configuration files built on them.

- ``demo``: the embedded default (bundled demo data, tiny EVE, 2 local gloo ranks, minutes on 2 CPU cores);
- ``paper_slurm`` / ``paper_k8s``: the paper's recipe (EVE-7B, batch 512/512/128, LR 4e-4/4e-5/2e-5,
  ZeRO-3, bf16) on 4 nodes x 8 GPUs of a SLURM or Kubernetes cluster.

``RECIPES`` maps the names used by the CLI and the deployments to these functions; every recipe
builds with its defaults (the cluster ones name placeholder paths to replace).

A configuration file (``eve retrain --config FILE``, a deployment's ``config`` parameter) is read by
``load_retrain_config`` into the flows' own ``RetrainParameters``, unknown keys refused, every
problem named by its field. ``eve retrain --print-config NAME`` writes a recipe out as such a file,
every field with its docstring (``recipe_as_yaml``), to start from.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flows.data_flow import DataFlowParams
from flows.parameter_files import (
    ParameterFileError,
    commented_yaml,
    describe_validation_error,
    document_of,
    parse_assignment,
    set_dotted,
    validate_document,
)
from flows.parameters import EvaluationParameters, RetrainParameters
from eve_model.training.config import StageId, StageOverrides
from tasks.caption.config import CaptionConfig
from tasks.data.sft_mixture import SftMixtureConfig
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
        data=DataFlowParams.demo(),
        # The demo's "teacher VLM" output is the scene description shipped with the data; the noisy
        # alt-text stays in each sample as source_caption.
        captions=CaptionConfig(backend="source", source_field="true_caption"),
        # Stage 3 as LLaVA trains it: the QA conversations plus caption conversations (half as many) and
        # text-only description turns (a quarter as many). Measured on the demo (stage 3 alone, same stage-2
        # model): held-out text perplexity 1275 -> 2.7 (base LLM 1.9), held-out VQA unchanged (0.41 -> 0.42).
        sft_mixture=SftMixtureConfig(caption_conversation_ratio=0.5, text_only_ratio=0.25),
        training=TrainingParameters(
            cache_teacher_features=True,
            stage_overrides={
                StageId.BASE_LLM: StageOverrides(max_steps=120, **_DEMO_BATCH),
                # Measured on the demo (held-out VQA, 200 questions; stages driven side by side): with one
                # visual token per scene cell (EveConfig.tiny: 3 x 3 cells of 32 px) a step costs ~40% of the
                # earlier 7 x 7 grid's, and the steps it frees go where reading the image is learned:
                # stage 1 (PEL + PAL against the teacher, LLM frozen) 60 -> 300 steps, stage 2 500 -> 600,
                # stage 3 400 -> 700. Stage 1 at 1e-3: 4e-3 blew the visual tokens up to ~130x the
                # text-embedding norm. Stage 2 at 2e-3 (the paper's 4e-4-scale never taught the LLM to read
                # its visual block in a few hundred steps); stage 3 at half of that.
                StageId.PREALIGN: StageOverrides(max_steps=300, learning_rates={"pel": 1e-3, "aligning": 1e-3},
                                                 **_DEMO_BATCH),
                StageId.PRETRAIN: StageOverrides(max_steps=600, warmup_ratio=0.03,
                                                 learning_rates={"pel": 2e-3, "aligning": 2e-3, "llm": 2e-3},
                                                 **_DEMO_BATCH),
                StageId.SFT: StageOverrides(max_steps=700, learning_rates={"pel": 1e-3, "aligning": 1e-3, "llm": 1e-3},
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


def _paper_data(shared_root: str, sources: list[SourceSpec] | None, sft_sources: list[SourceSpec] | None) -> DataFlowParams:
    """The paper's data rules on the given sources; placeholders under the shared root otherwise:
    the pre-training images (any recognised layout) and LLaVA's 665k instruction mix."""
    return DataFlowParams.paper(
        "eve-cap",
        sources or [SourceSpec(location=f"{shared_root}/raw/captions")],
        sft_sources or [SourceSpec(location=f"{shared_root}/raw/llava/llava_v1_5_mix665k.json")],
    )


def _paper(
    backend: str,
    data: DataFlowParams,
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
        data=data,
        evaluation=EvaluationParameters(gate=paper_gate_policy(),
                                        eval_questions_path=f"{shared_root}/eval/vqa/questions.jsonl"),
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
    sft_sources: list[SourceSpec] | None = None,
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
        "slurm", _paper_data(shared_root, sources, sft_sources), base_llm_dir, teacher_dir, image, shared_root,
        partition=partition, constraint=constraint, time_limit_minutes=48 * 60,
        runtime_environment=runtime_environment, container_options=mounts if image else [],
    )


def paper_k8s(
    sources: list[SourceSpec] | None = None,
    sft_sources: list[SourceSpec] | None = None,
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
        "k8s", _paper_data(shared_root, sources, sft_sources), base_llm_dir, teacher_dir, image, shared_root,
        backend_options=options.model_dump(), time_limit_minutes=None,
    )


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


RECIPE_KEYS = ("recipe", "arguments", "parameters")


def parse_retrain_config(document: Any, origin: str = "config") -> RetrainParameters:
    """``RetrainParameters`` from a parsed configuration: either every field written out (what
    ``--print-config`` prints), or a recipe with changes::

        recipe: paper-slurm            # a name of RECIPES
        arguments: {partition: a100}   # keyword arguments of the recipe function
        parameters:                    # merged into the recipe's parameters, key by key
          training: {job: {env: {NCCL_SOCKET_IFNAME: ib0}}}

    Raises ``ParameterFileError`` with one line per problem, each naming its field: an unknown key
    (with the fields that exist), a wrong value (with the allowed ones), a missing required field."""
    if not isinstance(document, dict):
        raise ParameterFileError(f"{origin}: expected a mapping of retrain parameters or a recipe, got {type(document).__name__}")
    if "recipe" not in document:
        return validate_document(RetrainParameters, document, origin)
    unknown = sorted(set(document) - set(RECIPE_KEYS))
    if unknown:
        raise ParameterFileError(f"{origin}: unknown keys {unknown} next to 'recipe' (allowed: {', '.join(RECIPE_KEYS)})")
    name = document["recipe"]
    if name not in RECIPES:
        raise ParameterFileError(f"{origin}: recipe: unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    arguments = document.get("arguments") or {}
    accepted = set(inspect.signature(RECIPES[name]).parameters)
    if set(arguments) - accepted:
        raise ParameterFileError(f"{origin}: arguments: {sorted(set(arguments) - accepted)} are not arguments of "
                                 f"recipe {name!r} (it takes: {', '.join(sorted(accepted)) or 'none'})")
    try:
        base = RECIPES[name](**arguments)
    except ValidationError as error:
        raise ParameterFileError(f"{origin}: recipe {name!r} with these arguments: "
                                 + "; ".join(describe_validation_error(error))) from None
    changes = document.get("parameters") or {}
    if not changes:
        return base
    return validate_document(RetrainParameters, _merge(document_of(base), changes), origin)


def load_retrain_config(path: str | Path, overrides: list[str] | None = None) -> RetrainParameters:
    """A retrain's parameters from a YAML or JSON file (``parse_retrain_config``; relative paths are
    relative to the file's folder, ``anchored_paths``), then ``overrides`` (``path.to.field=VALUE``,
    the CLI's ``--set``) applied and validated again."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ParameterFileError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ParameterFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    params = anchored_paths(parse_retrain_config(document, str(path)), path.resolve().parent)
    return with_overrides(params, overrides or [], str(path))


def _anchored(location: str | None, base: Path) -> str | None:
    if location is None or "://" in location or Path(location).is_absolute():
        return location
    return str((base / location).resolve())


def anchored_paths(params: RetrainParameters, base: Path) -> RetrainParameters:
    """``params`` with relative local paths (source locations, the held-out questions, the base LLM)
    taken relative to ``base``, the configuration file's folder: the file means the same data
    wherever it is run from (a deployment's worker runs in the platform checkout)."""
    data = params.data.model_copy(update={
        "sources": [s.model_copy(update={"location": _anchored(s.location, base)}) for s in params.data.sources],
        "sft_sources": [s.model_copy(update={"location": _anchored(s.location, base)}) for s in params.data.sft_sources],
    })
    evaluation = params.evaluation.model_copy(update={"eval_questions_path": _anchored(params.evaluation.eval_questions_path, base)})
    training = params.training.model_copy(update={"base_llm_dir": _anchored(params.training.base_llm_dir, base)})
    return params.model_copy(update={"data": data, "evaluation": evaluation, "training": training})


def with_overrides(params: RetrainParameters, overrides: list[str], origin: str = "--set") -> RetrainParameters:
    """``params`` with each ``path.to.field=VALUE`` set (values read as YAML), validated again."""
    if not overrides:
        return params
    document = document_of(params)
    for assignment in overrides:
        path, value = parse_assignment(assignment)
        set_dotted(document, path, value)
    return validate_document(RetrainParameters, document, f"{origin} with --set {' '.join(overrides)}")


def with_dataset(params: RetrainParameters, dataset: str) -> RetrainParameters:
    """``params`` training on a registered raw version (tag, hash or prefix) instead of its sources."""
    data = params.data.model_dump()
    data.update(dataset=dataset, sources=[], use_demo_source=False)
    if params.data.use_demo_source:
        data["dataset_name"] = None  # the demo's name does not describe another version: take the tag's
    return params.model_copy(update={"data": DataFlowParams.model_validate(data)})


def named_config(name: str) -> RetrainParameters:
    """A recipe by name (``demo``, ``paper-slurm``, ...) or a configuration file: an absolute path, or
    relative to the working directory or to the platform checkout (where deployments run)."""
    if name in RECIPES:
        return RECIPES[name]()
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if not path.exists():
        raise ParameterFileError(f"config {name!r}: neither a recipe ({', '.join(sorted(RECIPES))}) nor an existing file")
    return load_retrain_config(path)


def resolve_retrain_parameters(
    params: RetrainParameters, config: str | None = None, dataset: str | None = None, *, training: bool = True
) -> RetrainParameters:
    """The parameters a run uses: ``config`` (a recipe name or a configuration file) replaces
    ``params``; ``dataset`` (a registered raw version) replaces its sources. With ``training``, what a
    training run needs and the parameters lack is refused here, before any data is read."""
    if config:
        params = named_config(config)
    if dataset:
        params = with_dataset(params, dataset)
    missing = params.missing_for_training() if training else []
    if missing:
        raise ParameterFileError(f"{config or 'parameters'}: " + "; ".join(missing))
    return params


def recipe_as_yaml(name: str) -> str:
    """A recipe written out as a configuration file: every field, each with its docstring above it.
    ``load_retrain_config`` reads it back to the same parameters."""
    if name not in RECIPES:
        raise ParameterFileError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    header = [
        f"# Retrain configuration: the {name!r} recipe (flows/recipes.py), every field written out.",
        "# Edit what you need, check it with  eve retrain --config THIS_FILE --dry-run , run it with",
        "#   eve retrain --config THIS_FILE   or give it to the deployments with  eve deploy --config THIS_FILE .",
        "# A shorter file names the recipe and only what changes:",
        f"#   recipe: {name}",
        "#   parameters: {data: {dataset_name: mine}}",
        "# Own data: docs/own-data.md.",
    ]
    return "\n".join([*header, *commented_yaml(RECIPES[name]())]) + "\n"


RECIPES: dict[str, Callable[..., RetrainParameters]] = {
    "demo": demo,
    "paper-slurm": paper_slurm,
    "paper-k8s": paper_k8s,
}
"""Recipe names (CLI, deployments) -> functions."""


__all__ = [
    "RECIPES",
    "demo",
    "load_retrain_config",
    "named_config",
    "paper_k8s",
    "paper_slurm",
    "parse_retrain_config",
    "recipe_as_yaml",
    "resolve_retrain_parameters",
    "with_dataset",
    "with_overrides",
]
