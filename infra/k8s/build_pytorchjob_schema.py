"""Build infra/k8s/schemas/pytorchjob-kubeflow-v1.json, the vendored schema of kubeflow.org/v1 PyTorchJob.

The top level follows the Kubeflow training operator's Go types (pkg/apis/kubeflow.org/v1:
PyTorchJobSpec, RunPolicy, ElasticPolicy, ReplicaSpec, JobStatus); the pod template is the strict
Kubernetes PodTemplateSpec schema shipped by kubernetes-validate, with every definition it reaches
copied in, so the file validates offline and rejects unknown fields at every level (like
`kubectl apply --validate=strict` against a cluster with the CRD installed).

Run once when the pinned kubernetes-validate or the operator version changes:
    .venv/bin/python infra/k8s/build_pytorchjob_schema.py
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate

KUBERNETES_SCHEMA_VERSION = "v1.37.0-local-strict"
OUTPUT = Path(__file__).parent / "schemas" / "pytorchjob-kubeflow-v1.json"
_REF_PREFIX = "#/$defs/"  # how _definitions.json refers to its own entries


def _closed(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _definition_ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def _reachable_definitions(all_definitions: dict, root: str) -> dict:
    wanted, pending = {}, [root]
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        wanted[name] = all_definitions[name]
        text = json.dumps(all_definitions[name])
        for chunk in text.split(_REF_PREFIX)[1:]:
            pending.append(chunk.split('"', 1)[0])
    return wanted


def build() -> dict:
    package_dir = Path(kubernetes_validate.__file__).parent
    definitions_path = package_dir / "kubernetes-json-schema" / KUBERNETES_SCHEMA_VERSION / "_definitions.json"
    all_definitions = json.loads(definitions_path.read_text())["$defs"]
    definitions = _reachable_definitions(all_definitions, "io.k8s.api.core.v1.PodTemplateSpec")
    definitions.update(_reachable_definitions(all_definitions, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"))
    definitions.update(_reachable_definitions(all_definitions, "io.k8s.api.autoscaling.v2.MetricSpec"))
    definitions.update(_reachable_definitions(all_definitions, "io.k8s.apimachinery.pkg.api.resource.Quantity"))

    integer = {"type": "integer"}
    replica_spec = _closed(
        {
            "replicas": integer,
            "template": _definition_ref("io.k8s.api.core.v1.PodTemplateSpec"),
            "restartPolicy": {"type": "string", "enum": ["Always", "OnFailure", "Never", "ExitCode"]},
        }
    )
    run_policy = _closed(
        {
            "cleanPodPolicy": {"type": "string", "enum": ["All", "Running", "None"]},
            "ttlSecondsAfterFinished": integer,
            "activeDeadlineSeconds": integer,
            "backoffLimit": integer,
            "suspend": {"type": "boolean"},
            "managedBy": {"type": "string"},
            "schedulingPolicy": _closed(
                {
                    "minAvailable": integer,
                    "queue": {"type": "string"},
                    "minResources": {
                        "type": "object",
                        "additionalProperties": _definition_ref("io.k8s.apimachinery.pkg.api.resource.Quantity"),
                    },
                    "priorityClass": {"type": "string"},
                    "scheduleTimeoutSeconds": integer,
                }
            ),
        }
    )
    elastic_policy = _closed(
        {
            "minReplicas": integer,
            "maxReplicas": integer,
            "rdzvBackend": {"type": "string", "enum": ["c10d", "etcd", "etcd-v2"]},
            "rdzvPort": integer,
            "rdzvHost": {"type": "string"},
            "rdzvId": {"type": "string"},
            "rdzvConf": {
                "type": "array",
                "items": _closed({"key": {"type": "string"}, "value": {"type": "string"}}),
            },
            "standalone": {"type": "boolean"},
            "nProcPerNode": integer,
            "maxRestarts": integer,
            "metrics": {"type": "array", "items": _definition_ref("io.k8s.api.autoscaling.v2.MetricSpec")},
        }
    )
    condition = _closed(
        {
            "type": {"type": "string"},
            "status": {"type": "string"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastUpdateTime": {"type": "string"},
            "lastTransitionTime": {"type": "string"},
        },
        required=["type", "status"],
    )
    replica_status = _closed(
        {
            "active": integer,
            "succeeded": integer,
            "failed": integer,
            "labelSelector": {"type": "object"},
            "selector": {"type": "string"},
        }
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "PyTorchJob (kubeflow.org/v1), strict",
        "description": "Generated by infra/k8s/build_pytorchjob_schema.py; unknown fields are rejected.",
        **_closed(
            {
                "apiVersion": {"const": "kubeflow.org/v1"},
                "kind": {"const": "PyTorchJob"},
                "metadata": _definition_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                "spec": _closed(
                    {
                        "runPolicy": run_policy,
                        "elasticPolicy": elastic_policy,
                        "nprocPerNode": {"type": "string"},
                        "pytorchReplicaSpecs": {
                            "type": "object",
                            "propertyNames": {"enum": ["Master", "Worker"]},
                            "additionalProperties": replica_spec,
                            "minProperties": 1,
                        },
                    },
                    required=["pytorchReplicaSpecs", "runPolicy"],
                ),
                "status": _closed(
                    {
                        "conditions": {"type": "array", "items": condition},
                        "replicaStatuses": {"type": "object", "additionalProperties": replica_status},
                        "startTime": {"type": "string"},
                        "completionTime": {"type": "string"},
                        "lastReconcileTime": {"type": "string"},
                    }
                ),
            },
            required=["apiVersion", "kind", "metadata", "spec"],
        ),
        "$defs": definitions,
    }


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")
