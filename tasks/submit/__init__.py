"""Job submission backends (local, SLURM, Kubernetes) behind one interface.

    from tasks.submit.base import get_backend
    from tasks.submit.spec import JobSpec, JobState

    backend = get_backend("slurm", slurm_conf="/tmp/eve-slurm/etc/slurm.conf")   # or "local", "k8s"
    handle = backend.submit(JobSpec(...))
    status = backend.wait(handle, poll_seconds=5, timeout_seconds=None, on_log=print)

Modules: spec (JobSpec, JobState, JobHandle, JobStatus), base (Backend, get_backend, wait loop),
local, slurm (+ slurm_state parser), k8s, render (quoting guard), prefect_tasks (Prefect wrapper).
"""
