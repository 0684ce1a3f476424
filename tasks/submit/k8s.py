"""Kubernetes backend: a PyTorchJob (Kubeflow training operator) or an Indexed Job + headless Service.

Manifests are rendered from infra/k8s/*.yaml.j2 and validated offline before anything is sent:
built-in kinds against kubernetes-validate's strict schemas, PyTorchJob against the vendored CRD
schema (infra/k8s/schemas/pytorchjob-kubeflow-v1.json), both rejecting unknown fields. Objects are
created, read and deleted through the official ``kubernetes`` client with plain dict bodies
(its typed models reject valid resource names such as ``nvidia.com/gpu``).

One object is one attempt. Each pod runs the node supervisor (infra/k8s/node_supervisor.sh.j2) as
PID 1: torchrun for the pod's ranks with a shutdown timeout derived from the checkpoint save time,
exiting with the workload's exit code. A failed pod ends the attempt at once (``backoffLimit: 0``,
``restartPolicy: Never``, PyTorchJob ``cleanPodPolicy: Running``): restarting one pod alone would
leave the other nodes in a rendezvous that cannot complete. ``status`` reads the pods' exit codes,
so an attempt whose ranks flushed a checkpoint (``ExitCode.REQUEUE``) or whose pods were disrupted
is resumable and ``Backend.wait`` resubmits it as a new object with a fresh name (one incident, one
resubmission, up to ``JobSpec.max_resubmits``), while ``ExitCode.CONFIG_ERROR`` is not. There is no
``activeDeadlineSeconds``: a deadline ends a job without a flush.

No API server runs in this project's environment: the client path is tested against kmock's
in-memory Kubernetes emulator, which stores objects but runs no controllers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, Field

from eve_model.exit_codes import ExitCode
from tasks.submit.base import Backend, SubmitError, status_from_marker
from tasks.submit.render import INFRA_DIR, shell_template_environment, yaml_template_environment
from tasks.submit.spec import JobHandle, JobSpec, JobState, JobStatus

K8S_TEMPLATE_DIR = INFRA_DIR / "k8s"
PYTORCHJOB_SCHEMA_PATH = K8S_TEMPLATE_DIR / "schemas" / "pytorchjob-kubeflow-v1.json"
KUBERNETES_VERSION = "1.37"
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
MANAGED_BY = "eve-platform"


class ManifestValidationError(ValueError):
    """A rendered manifest does not match its schema (unknown field, wrong type, missing field)."""


class VolumeClaim(BaseModel):
    """A PersistentVolumeClaim mounted into every pod."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Volume name inside the pod."""
    claim: str
    """Name of the existing PersistentVolumeClaim (ReadWriteMany: every pod mounts it)."""
    mount_path: str
    """Where it appears in the container: the same path the submitting side uses for what it
    holds (platform home, datasets, models), so stage configs need no path translation."""
    read_only: bool = False
    """Mount read-only (base models, datasets)."""


class KubernetesOptions(BaseModel):
    """Cluster-side settings that a JobSpec does not carry."""

    namespace: str = "default"
    """Namespace of the job objects."""
    kind: str = Field(default="pytorchjob", pattern=r"^(pytorchjob|indexed-job)$")
    """pytorchjob (needs the Kubeflow training operator) or indexed-job (plain batch/v1)."""
    secret_name: str = "eve-secrets"
    """Kubernetes Secret holding the values of ``JobSpec.secret_env_names`` (key = variable name)."""
    rendezvous_port: int = 29500
    """c10d rendezvous port on the first pod."""
    volumes: list[VolumeClaim] = Field(default_factory=list)
    """Shared volumes (ReadWriteMany PVCs). Every path the job uses (``JobSpec.shared_paths``,
    ``log_dir``, ``eve_home``) must lie under one of their mount paths."""
    eve_home: str | None = None
    """``EVE_HOME`` in the pods (W&B runs, compiled-op cache): a path on a shared volume."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods require, e.g. ``{"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}``."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Pod tolerations (Kubernetes Toleration objects), e.g. for tainted GPU nodes."""
    scheduler_name: str | None = None
    """Pod ``schedulerName`` of a gang scheduler (e.g. ``volcano``); None: the default scheduler."""
    queue_name: str | None = None
    """Gang-scheduling queue: PyTorchJob ``schedulingPolicy`` (all pods or none, ``minAvailable`` =
    nodes) and the Kueue label ``kueue.x-k8s.io/queue-name`` (Kueue admits the whole job at once)."""
    priority_class: str | None = None
    """PriorityClass of the pods (and of the gang)."""
    rdma_resources: dict[str, str] = Field(default_factory=dict)
    """Extended resources for the RDMA NICs per pod, e.g. ``{"rdma/rdma_shared_device_a": "1"}``;
    when set, the container also gets the ``IPC_LOCK`` capability that verbs memory registration needs."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Pod annotations, e.g. Multus ``k8s.v1.cni.cncf.io/networks`` for a secondary RDMA network."""
    require_image_digest: bool = True
    """Refuse an image given by tag: a tag can move between attempts, a digest cannot."""
    ttl_seconds_after_finished: int = Field(default=7 * 24 * 3600, ge=0)
    """Finished job objects (and their pods' logs) are kept this long."""


_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def kubernetes_name(spec: JobSpec, attempt_suffix: str | None = None) -> str:
    """DNS-1035 name ``eve-<slug>-<hash6>-<attempt>``: the spec's content plus a fresh suffix per
    attempt, so a resubmission never collides with the finished object of the previous one (pods
    append suffixes, so <= 52 characters)."""
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:6]
    suffix = attempt_suffix or secrets.token_hex(3)[:5]
    slug = re.sub(r"[^a-z0-9-]", "", spec.scheduler_name)[:32].strip("-")
    return f"eve-{slug}-{digest}-{suffix}" if slug else f"eve-{digest}-{suffix}"


def _literal(text: str) -> str:
    """Kubernetes expands ``$(VAR)`` in env values and command args; ``$$(`` keeps it literal, so a
    name like ``$(WANDB_API_KEY)`` cannot pull a secret into another variable."""
    return text.replace("$(", "$$(")


def _on_a_volume(path: str, volumes: list[VolumeClaim]) -> bool:
    candidate = PurePosixPath(path)
    return any(candidate == PurePosixPath(v.mount_path) or PurePosixPath(v.mount_path) in candidate.parents for v in volumes)


def check_paths_on_volumes(spec: JobSpec, options: KubernetesOptions) -> None:
    """Every path the pods use lies on a mounted shared volume; raises ``ValueError`` naming the first that does not."""
    paths = [*spec.shared_paths, str(spec.log_dir), *([options.eve_home] if options.eve_home else [])]
    for path in paths:
        if "://" in path:
            continue  # object storage (s3://...) is reached over the network, not mounted
        if not _on_a_volume(path, options.volumes):
            mounted = ", ".join(f"{v.claim} at {v.mount_path}" for v in options.volumes) or "none"
            raise ValueError(
                f"{spec.name!r}: {path} is on no shared volume of the pods (mounted: {mounted}); "
                "add a ReadWriteMany volume that holds it in KubernetesOptions.volumes"
            )


def render_node_supervisor(spec: JobSpec, rendezvous_host: str | None, rendezvous_port: int) -> str:
    """The script each pod runs as PID 1 (infra/k8s/node_supervisor.sh.j2): torchrun for the
    pod's ranks under the same supervisor as SLURM and local jobs, exiting with the workload's
    exit code so that the pod status carries ``ExitCode.CONFIG_ERROR`` or ``REQUEUE``.
    ``rendezvous_host`` None: the PyTorchJob operator's ``MASTER_ADDR``/``MASTER_PORT``."""
    template = shell_template_environment([K8S_TEMPLATE_DIR, INFRA_DIR / "slurm"]).get_template("node_supervisor.sh.j2")
    return template.render(spec=spec, workdir=spec.container_workdir, pod_env=True,
                           operator_rendezvous=rendezvous_host is None,
                           rendezvous_host=rendezvous_host or "", rendezvous_port=rendezvous_port)


def _context(spec: JobSpec, options: KubernetesOptions, name: str, rendezvous_host: str | None) -> dict:
    if not spec.container_image:
        raise ValueError(f"{spec.name!r}: Kubernetes jobs need JobSpec.container_image")
    if options.require_image_digest and not _DIGEST.search(spec.container_image):
        raise ValueError(
            f"{spec.name!r}: image {spec.container_image!r} is given by tag; pin it by digest "
            "(name@sha256:...) so every pod and every attempt runs the same bytes"
        )
    check_paths_on_volumes(spec, options)
    resources = {"cpu": str(spec.cpus_per_task * spec.ranks_per_node)}
    if spec.memory_gb:
        resources["memory"] = f"{spec.memory_gb}Gi"
    if spec.gpus_per_node:
        resources["nvidia.com/gpu"] = str(spec.gpus_per_node)
    resources.update(options.rdma_resources)
    env = dict(spec.env)
    if options.eve_home:
        env["EVE_HOME"] = options.eve_home
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, "eve.platform/job": name}
    if options.queue_name:
        labels["kueue.x-k8s.io/queue-name"] = options.queue_name
    return {
        "name": name,
        "namespace": options.namespace,
        "human_name": _literal(spec.name),
        "labels": labels,
        "pod_labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "eve.platform/job": name},
        "image": spec.container_image,
        "workdir": spec.container_workdir,
        "log_dir": _literal(str(spec.log_dir)),
        "argv": ["bash", "-c", _literal(render_node_supervisor(spec, rendezvous_host, options.rendezvous_port)), "eve-node"],
        "env": sorted((key, _literal(value)) for key, value in env.items()),
        "secret_env_names": spec.secret_env_names,
        "secret_name": options.secret_name,
        "resources": resources,
        "volumes": [volume.model_dump() for volume in options.volumes],
        "nodes": spec.nodes,
        "ranks_per_node": spec.ranks_per_node,
        "gpus_per_node": spec.gpus_per_node,
        "rendezvous_port": options.rendezvous_port,
        "grace_seconds": spec.termination_grace_seconds,
        "subdomain": None,
        "node_selector": options.node_selector,
        "tolerations": options.tolerations,
        "scheduler_name": options.scheduler_name,
        "queue_name": options.queue_name,
        "priority_class": options.priority_class,
        "capabilities": ["IPC_LOCK"] if options.rdma_resources else [],
        "pod_annotations": options.pod_annotations,
        "ttl_seconds": options.ttl_seconds_after_finished,
    }


def render_manifests(spec: JobSpec, options: KubernetesOptions | None = None, attempt_suffix: str | None = None) -> list[dict]:
    """The objects to create for one attempt of ``spec``, in creation order; each validated (raises
    on mismatch). ``attempt_suffix`` fixes the name's attempt part (default: random)."""
    options = options or KubernetesOptions()
    name = kubernetes_name(spec, attempt_suffix)
    environment = yaml_template_environment(K8S_TEMPLATE_DIR)
    if options.kind == "pytorchjob":
        # The operator sets MASTER_ADDR and MASTER_PORT on every pod (the Master pod's service);
        # the supervisor expands them in the pod.
        context = _context(spec, options, name, None)
        text = environment.get_template("pytorchjob.yaml.j2").render(ctx=context)
    else:
        context = _context(spec, options, name, f"{name}-0.{name}")
        context["subdomain"] = name
        text = environment.get_template("indexed-job.yaml.j2").render(ctx=context)
    manifests = [document for document in yaml.safe_load_all(text) if document]
    for manifest in manifests:
        validate_manifest(manifest)
    return manifests


@functools.lru_cache(maxsize=1)
def _pytorchjob_validator():
    import jsonschema

    schema = json.loads(PYTORCHJOB_SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: dict) -> None:
    """Offline schema validation; unknown fields are errors."""
    if manifest.get("kind") == "PyTorchJob":
        errors = sorted(_pytorchjob_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            location = "/".join(str(p) for p in first.absolute_path) or "<root>"
            raise ManifestValidationError(f"PyTorchJob {location}: {first.message}")
        return
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        raise ManifestValidationError(f"{manifest.get('kind')}: {error}") from error


def _condition_state(conditions: list[dict], kind: str) -> tuple[JobState, str]:
    """The newest true condition of a PyTorchJob or batch Job, as a JobState and reason."""
    active = [c for c in conditions or [] if str(c.get("status")) == "True"]
    if not active:
        return JobState.PENDING, ""
    latest = active[-1]
    kind_of = latest.get("type", "")
    reason = latest.get("reason") or ""
    message = latest.get("message") or ""
    text = f"{reason}: {message}".strip(": ")
    if kind_of in ("Succeeded", "Complete", "SuccessCriteriaMet"):
        return JobState.COMPLETED, text
    if kind_of in ("Failed", "FailureTarget"):
        if "DeadlineExceeded" in reason:
            return JobState.TIMED_OUT, text
        if "OOMKilled" in message or "OOMKilled" in reason:
            return JobState.OUT_OF_MEMORY, text
        return JobState.FAILED, text
    if kind_of == "Restarting":
        return JobState.REQUEUED, text
    if kind_of == "Running":
        return JobState.RUNNING, text
    if kind_of == "Suspended":
        return JobState.PENDING, text
    return JobState.PENDING, text


class KubernetesBackend(Backend):
    """Creates, polls and deletes job objects through the official Python client."""

    name = "k8s"

    def __init__(self, api_client=None, **options) -> None:
        """``api_client``: a configured ``kubernetes.client.ApiClient`` (None: load kubeconfig or
        in-cluster config); other keyword arguments are ``KubernetesOptions`` fields."""
        self.options = KubernetesOptions(**options)
        self._api_client = api_client
        self._cancelled: set[tuple[str, str]] = set()

    @property
    def api_client(self):
        if self._api_client is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api_client = client.ApiClient()
        return self._api_client

    def _apis(self):
        from kubernetes import client

        return (
            client.CustomObjectsApi(self.api_client),
            client.BatchV1Api(self.api_client),
            client.CoreV1Api(self.api_client),
        )

    def submit(self, spec: JobSpec) -> JobHandle:
        from kubernetes.client.exceptions import ApiException

        manifests = render_manifests(spec, self.options)
        custom, batch, core = self._apis()
        namespace = self.options.namespace
        try:
            for manifest in manifests:
                if manifest["kind"] == "PyTorchJob":
                    custom.create_namespaced_custom_object(
                        PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, namespace, PYTORCHJOB_PLURAL, manifest
                    )
                elif manifest["kind"] == "Service":
                    core.create_namespaced_service(namespace, manifest)
                else:
                    batch.create_namespaced_job(namespace, manifest)
        except ApiException as error:
            raise SubmitError(f"Kubernetes refused {spec.name!r}: {error.status} {error.reason}") from error
        job_name = manifests[-1]["metadata"]["name"]
        return JobHandle(
            backend=self.name,
            job_id=job_name,
            spec=spec,
            log_path=Path(),
            attempt_job_ids=[job_name],
            namespace=namespace,
        )

    def _read_object(self, handle: JobHandle) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        custom, batch, _ = self._apis()
        namespace = handle.namespace or self.options.namespace
        try:
            if self.options.kind == "pytorchjob":
                return custom.get_namespaced_custom_object(
                    PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, namespace, PYTORCHJOB_PLURAL, handle.job_id
                )
            return self.api_client.sanitize_for_serialization(batch.read_namespaced_job(handle.job_id, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _pods(self, handle: JobHandle) -> list:
        _, _, core = self._apis()
        namespace = handle.namespace or self.options.namespace
        return core.list_namespaced_pod(namespace, label_selector=f"eve.platform/job={handle.job_id}").items

    def _workload_status(self, handle: JobHandle) -> JobStatus | None:
        """The workload's end from its pods: the supervisor's exit code of each pod (the first
        refusal or failure wins over a flush, as in ``status_from_marker``); a disrupted pod
        (preemption, eviction) counts as stopped by SIGTERM. None when no pod has ended."""
        codes: list[int] = []
        disrupted = False
        for pod in self._pods(handle):
            status = pod.status
            if status is None:
                continue
            disrupted = disrupted or any(
                c.type == "DisruptionTarget" and c.status == "True" for c in (status.conditions or [])
            )
            for container in status.container_statuses or []:
                terminated = container.state.terminated if container.state is not None else None
                if container.name == "pytorch" and terminated is not None:
                    codes.append(int(terminated.exit_code))
        if not codes and not disrupted:
            return None
        failures = [code for code in codes if code not in (ExitCode.COMPLETED, ExitCode.REQUEUE)]
        if failures:
            own = [code for code in failures if code < 128]
            return status_from_marker({"exit_code": (own or failures)[0]})
        if ExitCode.REQUEUE in codes or disrupted:
            return status_from_marker({"exit_code": ExitCode.REQUEUE, "signal": "TERM"})
        return status_from_marker({"exit_code": ExitCode.COMPLETED})

    def status(self, handle: JobHandle) -> JobStatus:
        obj = self._read_object(handle)
        key = (handle.namespace or self.options.namespace, handle.job_id)
        if obj is None:
            if key in self._cancelled:
                return JobStatus(state=JobState.CANCELLED, reason="deleted by cancel")
            return JobStatus(state=JobState.UNKNOWN, reason="the job object no longer exists")
        status = obj.get("status") or {}
        state, reason = _condition_state(status.get("conditions") or [], obj.get("kind", ""))
        if state == JobState.PENDING and (status.get("active") or 0) > 0:
            state = JobState.RUNNING
        if state in (JobState.FAILED, JobState.OUT_OF_MEMORY):
            workload = self._workload_status(handle)
            if workload is not None and (workload.resumable or workload.exit_code not in (None, ExitCode.COMPLETED)):
                workload.reason = f"{workload.reason} ({reason})" if reason else workload.reason
                if state == JobState.OUT_OF_MEMORY and not workload.resumable:
                    workload.state = JobState.OUT_OF_MEMORY
                return self.with_log_tail(handle, workload)
        return self.with_log_tail(handle, JobStatus(state=state, reason=reason))

    def _first_pod_name(self, handle: JobHandle) -> str | None:
        pods = self._pods(handle)
        if not pods:
            return None
        # Rank 0 lives on the Master pod (PyTorchJob) or completion index 0 (Indexed Job).
        def order(pod) -> tuple[int, str]:
            labels = pod.metadata.labels or {}
            first = labels.get("training.kubeflow.org/replica-type", "").lower() == "master" or labels.get(
                "batch.kubernetes.io/job-completion-index"
            ) == "0"
            return (0 if first else 1, pod.metadata.name)

        return sorted(pods, key=order)[0].metadata.name

    def read_log_bytes(self, handle: JobHandle, since_offset: int = 0) -> bytes:
        from kubernetes.client.exceptions import ApiException

        pod_name = self._first_pod_name(handle)
        if pod_name is None:
            return b""
        _, _, core = self._apis()
        try:
            text = core.read_namespaced_pod_log(pod_name, handle.namespace or self.options.namespace)
        except ApiException:
            return b""
        return (text or "").encode()[since_offset:]

    def cancel(self, handle: JobHandle) -> None:
        from kubernetes.client.exceptions import ApiException

        custom, batch, core = self._apis()
        namespace = handle.namespace or self.options.namespace
        self._cancelled.add((namespace, handle.job_id))
        try:
            if self.options.kind == "pytorchjob":
                custom.delete_namespaced_custom_object(
                    PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, namespace, PYTORCHJOB_PLURAL, handle.job_id
                )
            else:
                batch.delete_namespaced_job(handle.job_id, namespace, propagation_policy="Foreground")
                core.delete_namespaced_service(handle.job_id, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
