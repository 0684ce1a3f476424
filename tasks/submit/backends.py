"""The submission backends by name: ``get_backend("local" | "slurm" | "k8s", **options)``.

The registry is the only module that imports every backend; ``tasks.submit.base`` (the interface
they implement) imports none of them, so the import graph has no cycle.
"""

from __future__ import annotations

from tasks.submit.base import Backend
from tasks.submit.k8s import KubernetesBackend
from tasks.submit.local import LocalBackend
from tasks.submit.slurm import SlurmBackend

BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "slurm": SlurmBackend,
    "k8s": KubernetesBackend,
    "kubernetes": KubernetesBackend,
}
"""Backend classes by the names ``TrainingParameters.backend`` and ``get_backend`` accept."""


def get_backend(name: str, **options) -> Backend:
    """``get_backend("local" | "slurm" | "k8s", **options)``; options go to the backend's constructor."""
    try:
        backend_class = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown submission backend {name!r}; choose local, slurm or k8s") from None
    return backend_class(**options)


__all__ = ["BACKENDS", "get_backend"]
