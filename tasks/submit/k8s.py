"""Kubernetes backend: a PyTorchJob (Kubeflow training operator) or an Indexed Job + headless Service.

Manifests are rendered from infra/k8s/*.yaml.j2 and validated offline before anything is sent:
built-in kinds against kubernetes-validate's strict schemas, PyTorchJob against the vendored CRD
schema (infra/k8s/schemas/pytorchjob-kubeflow-v1.json), both rejecting unknown fields. Objects are
created, read and deleted through the official ``kubernetes`` client with plain dict bodies
(its typed models reject valid resource names such as ``nvidia.com/gpu``).

No API server runs in this project's environment: the client path is tested against kmock's
in-memory Kubernetes emulator, which stores objects but runs no controllers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from tasks.submit.base import Backend, SubmitError
from tasks.submit.render import INFRA_DIR, yaml_template_environment
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
    """Name of the existing PersistentVolumeClaim."""
    mount_path: str
    """Where it appears in the container."""


class KubernetesOptions(BaseModel):
    """Cluster-side settings that a JobSpec does not carry."""

    namespace: str = "default"
    """Namespace of the job objects."""
    kind: str = Field(default="pytorchjob", pattern=r"^(pytorchjob|indexed-job)$")
    """pytorchjob (needs the Kubeflow training operator) or indexed-job (plain batch/v1)."""
    secret_name: str = "eve-secrets"
    """Kubernetes Secret holding the values of ``JobSpec.secret_env_names`` (key = variable name)."""
    container_python: str = "python"
    """Interpreter inside the image."""
    rendezvous_port: int = 29500
    """c10d rendezvous port on the first pod."""
    volumes: list[VolumeClaim] = Field(default_factory=list)
    """Data cache and checkpoint volumes (shared between pods, e.g. ReadWriteMany)."""


def kubernetes_name(spec: JobSpec) -> str:
    """DNS-1035 name, unique per spec content: ``eve-<slug>-<hash8>`` (pods append suffixes, so <= 52)."""
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9-]", "", spec.scheduler_name)[:38].strip("-")
    return f"eve-{slug}-{digest}" if slug else f"eve-{digest}"


def _literal(text: str) -> str:
    """Kubernetes expands ``$(VAR)`` in env values and command args; ``$$(`` keeps it literal, so a
    name like ``$(WANDB_API_KEY)`` cannot pull a secret into another variable."""
    return text.replace("$(", "$$(")


def _context(spec: JobSpec, options: KubernetesOptions, name: str, rendezvous_endpoint: str) -> dict:
    if not spec.container_image:
        raise ValueError(f"{spec.name!r}: Kubernetes jobs need JobSpec.container_image")
    resources = {"cpu": str(spec.cpus_per_task * spec.ranks_per_node)}
    if spec.memory_gb:
        resources["memory"] = f"{spec.memory_gb}Gi"
    limits = dict(resources)
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
        resources["nvidia.com/gpu"] = str(spec.gpus_per_node)
    command = list(spec.command)
    if command[0] == spec.python_executable:
        # The submitting machine's venv path means "the interpreter" here, not a path in the image.
        command[0] = options.container_python
    argv = [
        options.container_python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={spec.nodes}",
        f"--nproc-per-node={spec.ranks_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_endpoint}",
        f"--rdzv-id={name}",
        "--max-restarts=0",
        "--no-python",
        *(_literal(word) for word in command),
    ]
    return {
        "name": name,
        "namespace": options.namespace,
        "human_name": _literal(spec.name),
        "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "eve.platform/job": name},
        "image": spec.container_image,
        "workdir": str(spec.workdir),
        "log_dir": _literal(str(spec.log_dir)),
        "argv": argv,
        "env": sorted((key, _literal(value)) for key, value in spec.env.items()),
        "secret_env_names": spec.secret_env_names,
        "secret_name": options.secret_name,
        "resources": resources,
        "limits": limits,
        "volumes": [volume.model_dump() for volume in options.volumes],
        "nodes": spec.nodes,
        "ranks_per_node": spec.ranks_per_node,
        "rendezvous_port": options.rendezvous_port,
        "backoff_limit": spec.max_resubmits,
        "active_deadline_seconds": spec.time_limit_minutes * 60 if spec.time_limit_minutes is not None else None,
        "grace_seconds": max(spec.pre_timeout_signal_seconds, 30),
        "subdomain": None,
    }


def render_manifests(spec: JobSpec, options: KubernetesOptions | None = None) -> list[dict]:
    """The objects to create for ``spec``, in creation order; each validated (raises on mismatch)."""
    options = options or KubernetesOptions()
    name = kubernetes_name(spec)
    environment = yaml_template_environment(K8S_TEMPLATE_DIR)
    if options.kind == "pytorchjob":
        # $(VAR) is expanded by the kubelet from the env the operator injects, not by a shell.
        context = _context(spec, options, name, "$(MASTER_ADDR):$(MASTER_PORT)")
        text = environment.get_template("pytorchjob.yaml.j2").render(ctx=context)
    else:
        context = _context(spec, options, name, f"{name}-0.{name}:{options.rendezvous_port}")
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
        restarts = 0
        for replica in (status.get("replicaStatuses") or {}).values():
            restarts += int(replica.get("failed") or 0)
        return self.with_log_tail(handle, JobStatus(state=state, reason=reason, restarts=restarts))

    def _first_pod_name(self, handle: JobHandle) -> str | None:
        _, _, core = self._apis()
        namespace = handle.namespace or self.options.namespace
        pods = core.list_namespaced_pod(namespace, label_selector=f"eve.platform/job={handle.job_id}").items
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
