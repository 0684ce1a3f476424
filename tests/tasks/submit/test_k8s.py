"""Kubernetes manifests (offline validation) and the client path against kmock's in-memory emulator.

No Kubernetes API server can run in this environment; the emulator stores objects but runs no
controllers, so these tests play the training operator by patching ``status`` themselves.
"""

from __future__ import annotations

import copy
import sys

import pytest
import yaml

from eve_model.exit_codes import ExitCode
from eve_model.training.config import PRESETS, preset_stage_config
from tasks.submit.k8s import (
    KubernetesBackend,
    KubernetesOptions,
    ManifestValidationError,
    VolumeClaim,
    render_manifests,
    validate_manifest,
)
from tasks.submit.spec import JobSpec, JobState

from tests.tasks.submit.k8s_emulator import running_emulator

IMAGE = "ghcr.io/eve-platform/train@sha256:" + "ab" * 32
VOLUMES = [
    VolumeClaim(name="data-cache", claim="eve-data-cache", mount_path="/data-cache"),
    VolumeClaim(name="checkpoints", claim="eve-checkpoints", mount_path="/checkpoints"),
]
STAGES_OF_PRESET = {"tiny": ["base-llm", 1, 2, 3], "eve_7b": [1, 2, 3], "eve_7b_hd": [1, 2, 3]}
RESOURCES_OF_PRESET = {
    "tiny": dict(nodes=1, tasks_per_node=2, cpus_per_task=1, memory_gb=4),
    "eve_7b": dict(nodes=4, gpus_per_node=8, cpus_per_task=8, memory_gb=900),
    "eve_7b_hd": dict(nodes=4, gpus_per_node=8, cpus_per_task=8, memory_gb=900),
}


def _stage_spec(preset: str, stage) -> JobSpec:
    parent = None if stage == "base-llm" else "/checkpoints/parent/final"
    config = preset_stage_config(
        preset, stage, output_dir="/checkpoints/out", dataset_location="/data-cache/ds", init_checkpoint=parent
    )
    return JobSpec(
        name=f"{config.run_name} retrain 2026-11",
        command=[sys.executable, "-m", "eve_model.train", f"/checkpoints/{config.run_name}/stage.json"],
        workdir="/workspace",
        log_dir=f"/checkpoints/{config.run_name}/logs",
        container_image=IMAGE,
        secret_env_names=["WANDB_API_KEY"],
        env={"WANDB_MODE": config.wandb_mode},
        **RESOURCES_OF_PRESET[preset],
    )


PRESET_STAGES = [(preset, stage) for preset in PRESETS for stage in STAGES_OF_PRESET[preset]]


@pytest.mark.parametrize("kind", ["pytorchjob", "indexed-job"])
@pytest.mark.parametrize(("preset", "stage"), PRESET_STAGES)
def test_every_stage_preset_renders_valid_manifests(preset, stage, kind):
    spec = _stage_spec(preset, stage)
    manifests = render_manifests(spec, KubernetesOptions(kind=kind, volumes=VOLUMES))

    kinds = [m["kind"] for m in manifests]
    assert kinds == (["PyTorchJob"] if kind == "pytorchjob" else ["Service", "Job"])
    pods = (
        list(manifests[0]["spec"]["pytorchReplicaSpecs"].values())
        if kind == "pytorchjob"
        else [{"replicas": manifests[1]["spec"]["completions"], "template": manifests[1]["spec"]["template"]}]
    )
    assert sum(p["replicas"] for p in pods) == spec.nodes
    container = pods[0]["template"]["spec"]["containers"][0]
    # The node supervisor is PID 1 and runs torchrun for this pod's ranks.
    assert container["command"][:2] == ["bash", "-c"]
    script = container["command"][2]
    assert f"--nnodes={spec.nodes}" in script and f"--nproc-per-node={spec.ranks_per_node}" in script
    # The submitting machine's interpreter path becomes the image's interpreter.
    assert " ".join(['"$rank_wrapper"', "eve-rank", "python", *spec.command[1:]]) in script
    assert spec.python_executable not in script
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data-cache", "/checkpoints", "/dev/shm"} <= mounts
    if spec.gpus_per_node:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(spec.gpus_per_node)


def _pytorchjob() -> dict:
    return render_manifests(_stage_spec("eve_7b", 2), KubernetesOptions(volumes=VOLUMES))[0]


@pytest.mark.parametrize(
    "path",
    [
        ("spec", "runPolicy", "backofLimit"),
        ("spec", "pytorchReplicaSpecs", "Master", "restartPolicyy"),
        ("spec", "pytorchReplicaSpecs", "Master", "template", "spec", "containers", 0, "imagePullPolicyy"),
        ("spec", "pytorchReplicaSpecs", "Master", "template", "spec", "volumes", 0, "emptyDir", "medum"),
        ("spec", "elastcPolicy"),
    ],
)
def test_misspelled_pytorchjob_field_is_rejected(path):
    manifest = _pytorchjob()
    validate_manifest(manifest)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "x"
    with pytest.raises(ManifestValidationError):
        validate_manifest(manifest)


def test_misspelled_or_mistyped_builtin_fields_are_rejected():
    service, job = render_manifests(_stage_spec("tiny", 1), KubernetesOptions(kind="indexed-job", volumes=VOLUMES))
    validate_manifest(job)
    misspelled = copy.deepcopy(job)
    misspelled["spec"]["completionsMode"] = "Indexed"
    with pytest.raises(ManifestValidationError):
        validate_manifest(misspelled)
    mistyped = copy.deepcopy(service)
    mistyped["spec"]["ports"][0]["port"] = "twenty-nine-thousand"
    with pytest.raises(ManifestValidationError):
        validate_manifest(mistyped)
    wrong_replica_type = _pytorchjob()
    wrong_replica_type["spec"]["pytorchReplicaSpecs"]["Launcher"] = wrong_replica_type["spec"]["pytorchReplicaSpecs"]["Worker"]
    with pytest.raises(ManifestValidationError):
        validate_manifest(wrong_replica_type)


def test_secret_values_are_references_and_dollar_names_stay_literal(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-123")
    spec = _stage_spec("tiny", 1).model_copy(update={"name": "run $(WANDB_API_KEY) x", "env": {"NOTE": "$(WANDB_API_KEY)"}})
    for kind in ("pytorchjob", "indexed-job"):
        text = yaml.safe_dump_all(render_manifests(spec, KubernetesOptions(kind=kind, volumes=VOLUMES)))
        assert "wandb-secret-value-123" not in text
        container = yaml.safe_load_all(text)
        pod = [m for m in container][-1]
        template = pod["spec"]["pytorchReplicaSpecs"]["Master"]["template"] if kind == "pytorchjob" else pod["spec"]["template"]
        env = {item["name"]: item for item in template["spec"]["containers"][0]["env"]}
        assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "eve-secrets", "key": "WANDB_API_KEY"}
        # Kubernetes expands $(VAR) in env values; $$( keeps it literal so no secret is copied out.
        assert env["NOTE"]["value"] == "$$(WANDB_API_KEY)"
        assert env["EVE_JOB_NAME"]["value"] == "run $$(WANDB_API_KEY) x"


def test_kubernetes_needs_an_image():
    spec = _stage_spec("tiny", 1).model_copy(update={"container_image": None})
    with pytest.raises(ValueError, match="container_image"):
        render_manifests(spec)


RESOURCES = ["kubeflow.org/v1/pytorchjobs", "v1/pods", "v1/services", "batch/v1/jobs"]


def test_pytorchjob_submit_poll_logs_cancel_against_emulator():
    from kubernetes import client

    with running_emulator(RESOURCES) as (emulator, api_client):
        backend = KubernetesBackend(api_client=api_client, namespace="training", volumes=[v.model_dump() for v in VOLUMES])
        spec = _stage_spec("eve_7b", 1)
        handle = backend.submit(spec)
        custom = client.CustomObjectsApi(api_client)
        stored = custom.get_namespaced_custom_object("kubeflow.org", "v1", "training", "pytorchjobs", handle.job_id)
        attempt = handle.job_id.rsplit("-", 1)[1]
        assert stored["spec"] == render_manifests(spec, backend.options, attempt_suffix=attempt)[0]["spec"]
        assert backend.status(handle).state == JobState.PENDING

        def operator_reports(*conditions):
            custom.patch_namespaced_custom_object(
                "kubeflow.org", "v1", "training", "pytorchjobs", handle.job_id,
                {"status": {"conditions": [dict(c, status="True") for c in conditions]}},
            )

        operator_reports({"type": "Created"}, {"type": "Running"})
        assert backend.status(handle).state == JobState.RUNNING
        operator_reports({"type": "Created"}, {"type": "Running"}, {"type": "Restarting", "reason": "PyTorchJobRestarting"})
        assert backend.status(handle).state == JobState.REQUEUED

        core = client.CoreV1Api(api_client)
        for pod_name, replica_type in ((f"{handle.job_id}-worker-0", "worker"), (f"{handle.job_id}-master-0", "master")):
            core.create_namespaced_pod("training", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": {"eve.platform/job": handle.job_id, "training.kubeflow.org/replica-type": replica_type}},
                "spec": {"containers": []},
            })
        emulator[f"get /api/v1/namespaces/training/pods/{handle.job_id}-master-0/log"] << "rank 0 step 1\nrank 0 step 2\n"
        emulator[f"get /api/v1/namespaces/training/pods/{handle.job_id}-worker-0/log"] << "worker line\n"
        assert backend.logs(handle) == "rank 0 step 1\nrank 0 step 2\n"
        assert backend.logs(handle, since_offset=len("rank 0 step 1\n")) == "rank 0 step 2\n"

        backend.cancel(handle)
        assert backend.status(handle).state == JobState.CANCELLED
        assert custom.list_namespaced_custom_object("kubeflow.org", "v1", "training", "pytorchjobs")["items"] == []


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([{"type": "Complete"}], JobState.COMPLETED),
        ([{"type": "Failed", "reason": "BackoffLimitExceeded"}], JobState.FAILED),
        ([{"type": "Failed", "reason": "PodFailurePolicy", "message": "container pytorch OOMKilled"}], JobState.OUT_OF_MEMORY),
    ],
)
def test_indexed_job_states_against_emulator(conditions, expected):
    from kubernetes import client

    with running_emulator(RESOURCES) as (emulator, api_client):
        backend = KubernetesBackend(api_client=api_client, kind="indexed-job", namespace="training",
                                    volumes=[v.model_dump() for v in VOLUMES])
        handle = backend.submit(_stage_spec("tiny", 2))
        services = client.CoreV1Api(api_client).list_namespaced_service("training").items
        assert [s.metadata.name for s in services] == [handle.job_id]
        batch = client.BatchV1Api(api_client)
        batch.patch_namespaced_job(handle.job_id, "training", {"status": {"active": 1}})
        assert backend.status(handle).state == JobState.RUNNING
        batch.patch_namespaced_job(
            handle.job_id, "training", {"status": {"active": 0, "conditions": [dict(c, status="True") for c in conditions]}}
        )
        assert backend.status(handle).state == expected


@pytest.mark.parametrize(
    ("pod_exit_codes", "disrupted", "state", "exit_code", "resumable"),
    [
        ([ExitCode.REQUEUE, ExitCode.REQUEUE], False, JobState.PREEMPTED, ExitCode.REQUEUE, True),
        ([ExitCode.CONFIG_ERROR, 143], False, JobState.FAILED, ExitCode.CONFIG_ERROR, False),
        ([3, ExitCode.REQUEUE], False, JobState.FAILED, 3, False),
        ([137], True, JobState.FAILED, 137, False),
        ([], True, JobState.PREEMPTED, ExitCode.REQUEUE, True),
    ],
)
def test_a_failed_attempt_is_read_from_its_pods_exit_codes(pod_exit_codes, disrupted, state, exit_code, resumable):
    """The node supervisor passes the workload's code to the pod status: 75 from every pod (a flush)
    or a disruption makes the attempt resumable (the platform resubmits it as a new object); 2 (the
    preflight refused) and a rank's own failure do not."""
    from kubernetes import client

    with running_emulator(RESOURCES) as (emulator, api_client):
        backend = KubernetesBackend(api_client=api_client, namespace="training", volumes=[v.model_dump() for v in VOLUMES])
        handle = backend.submit(_stage_spec("eve_7b", 2))
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            "kubeflow.org", "v1", "training", "pytorchjobs", handle.job_id,
            {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed"}]}},
        )
        core = client.CoreV1Api(api_client)
        codes = pod_exit_codes or [None]
        for index, code in enumerate(codes):
            status = {"conditions": [{"type": "DisruptionTarget", "status": "True"}] if disrupted and index == 0 else []}
            if code is not None:
                status["containerStatuses"] = [{"name": "pytorch", "image": IMAGE, "imageID": "", "ready": False,
                                                "restartCount": 0, "state": {"terminated": {"exitCode": int(code)}}}]
            core.create_namespaced_pod("training", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{handle.job_id}-{index}", "labels": {"eve.platform/job": handle.job_id}},
                "spec": {"containers": []}, "status": status,
            })
        emulator[f"get /api/v1/namespaces/training/pods/{handle.job_id}-0/log"] << "log\n"
        observed = backend.status(handle)
        assert (observed.state, observed.exit_code, observed.resumable) == (state, exit_code, resumable), observed
        if resumable:
            fresh = backend.resubmit(handle)
            assert fresh.job_id != handle.job_id and fresh.attempt_job_ids == [handle.job_id, fresh.job_id]
