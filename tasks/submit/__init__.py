"""Job submission backends (local, SLURM, Kubernetes) behind one interface.

    from tasks.submit.run import run_job_to_end
    from tasks.submit.spec import JobSpec

    result = run_job_to_end(JobSpec(...), "slurm", {"slurm_conf": "/tmp/eve-slurm/etc/slurm.conf"})  # or "local", "k8s"

``run_job_to_end`` is the one submission path (stage jobs of a retrain and ``eve train`` use it):
submit, stream the log, wait, resubmit resumable ends, map the end state. The parts, for callers
that need them one by one::

    from tasks.submit.backends import get_backend
    backend = get_backend("local")
    handle = backend.submit(spec)
    status = backend.wait(handle, poll_seconds=5, timeout_seconds=None, on_log=print)

Modules: spec (JobSpec, JobState, JobHandle, JobStatus), base (Backend interface, wait loop, exit
markers, signal relay; imports no backend), backends (``get_backend``: the registry that imports
them), local, slurm (+ slurm_state parser), k8s, render (quoting guard, exit codes for templates),
run (``run_job_to_end``, ``JobFailed``, ``SchedulerLost``, Prefect retry condition), dry_run (every
stage's job definitions written for review: ``eve retrain --dry-run --render DIR``). Exit codes are
``eve_model.exit_codes.ExitCode``. What a GPU cluster must provide: docs/cluster-runbook.md.
"""
