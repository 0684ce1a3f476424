"""The paper recipe's stage jobs for 4 nodes x 8 A100-80GB, as ``eve retrain --dry-run`` renders them
for SLURM and Kubernetes, checked item by item against what a real cluster needs (issue: volumes,
restart policy, exit-code passthrough, signal lead vs shutdown timeout vs save time, container, NCCL
environment, constraints). Offline: the manifests are validated against the strict schemas; the
node supervisor a pod runs as PID 1 is executed here to show that exit codes reach the pod status.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.main import main as eve
from eve_model.exit_codes import ExitCode
from flows.recipes import PAPER_DISTRIBUTED_ENV, load_retrain_config, paper_k8s, paper_slurm
from tasks.stages import plan_dry_run
from tasks.submit.k8s import KubernetesOptions, render_manifests, render_node_supervisor
from tasks.submit.slurm import render_sbatch_script
from tasks.submit.spec import JobSpec

HOME = Path("/shared/eve/home")
WORKLOADS = Path(__file__).parent / "workloads"


def _stage_jobs(params):
    return {planned.stage.value: (planned, spec) for planned, spec in plan_dry_run(params.training, HOME)}


@pytest.fixture(scope="module")
def slurm_jobs():
    return _stage_jobs(paper_slurm())


@pytest.fixture(scope="module")
def k8s_jobs():
    params = paper_k8s()
    return params, _stage_jobs(params)


def _flush_chain(spec: JobSpec) -> None:
    """The save fits in the flush, the flush in torchrun's timeout, the timeout in the lead."""
    assert spec.checkpoint_save_seconds >= 300  # a ~95 GB ZeRO-3 checkpoint from 32 ranks
    assert spec.flush_seconds >= spec.max_step_seconds + spec.checkpoint_save_seconds
    assert spec.shutdown_timeout_seconds >= spec.flush_seconds
    assert spec.shutdown_timeout_seconds > 30  # torchrun's default would kill the save


@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_slurm_stage_job_for_32_a100(slurm_jobs, stage):
    planned, spec = slurm_jobs[stage]
    script = render_sbatch_script(spec)
    directives = {line.split("=")[0]: line.split("=", 1)[-1] for line in script.splitlines() if line.startswith("#SBATCH")}
    # layout and constraints
    assert directives["#SBATCH --nodes"] == "4" and directives["#SBATCH --ntasks-per-node"] == "1"
    assert directives["#SBATCH --gpus-per-node"] == "a100:8"
    assert "#SBATCH --exclusive" in script and directives["#SBATCH --partition"] == "gpu"
    assert directives["#SBATCH --cpus-per-task"] == "80"
    srun = next(line for line in script.splitlines() if line.strip().startswith("srun "))
    assert "--cpus-per-task=80" in srun and "SRUN_CPUS_PER_TASK=80" in script  # not inherited since 22.05
    # container: pyxis, the image by digest, the shared root and the models at the same paths
    assert re.search(r"--container-image=\S+@sha256:[0-9a-f]{64}", srun)
    assert "--container-mounts=/shared/eve:/shared/eve,/models:/models:ro" in srun
    assert sys.executable not in script  # the submitting machine's interpreter is not the nodes' runtime
    # flush timing: signal lead > torchrun's shutdown timeout >= step + save
    _flush_chain(spec)
    assert f"--shutdown-timeout={spec.shutdown_timeout_seconds} " in script
    lead = int(directives["#SBATCH --signal"].split("@")[1])
    assert directives["#SBATCH --signal"].startswith("B:USR1@") and lead > spec.shutdown_timeout_seconds
    assert int(directives["#SBATCH --time"]) == 48 * 60
    # NCCL and torch.distributed settings, exported to every rank
    for key, value in PAPER_DISTRIBUTED_ENV.items():
        assert f"export {key}={value}" in script or f"export {key}='{value}'" in script, key
    assert "export EVE_HOME=/shared/eve/home" in script
    assert "EVE_EXPECTED_GPUS_PER_NODE=8" in script  # the preflight's CUDA check
    # batch arithmetic: 512/512/128 on 32 GPUs with accumulation 1
    assert spec.world_size == 32
    assert planned.config.gradient_accumulation_steps(spec.world_size) == 1
    assert planned.config.checkpoint_interval_minutes == 60


def _pods(manifests: list[dict]) -> list[dict]:
    job = manifests[-1]
    if job["kind"] == "PyTorchJob":
        return [replica["template"] for replica in job["spec"]["pytorchReplicaSpecs"].values()]
    return [job["spec"]["template"]]


@pytest.mark.parametrize("stage", ["1", "2", "3"])
@pytest.mark.parametrize("kind", ["pytorchjob", "indexed-job"])
def test_kubernetes_stage_job_for_32_a100(k8s_jobs, stage, kind):
    params, jobs = k8s_jobs
    planned, spec = jobs[stage]
    options = KubernetesOptions(**{**params.training.backend_options, "kind": kind})
    manifests = render_manifests(spec, options)  # validated offline against the strict schemas
    job = manifests[-1]
    if kind == "pytorchjob":
        run_policy = job["spec"]["runPolicy"]
        # restart policy: one incident ends the attempt and the other pods are removed
        assert run_policy["backoffLimit"] == 0 and run_policy["cleanPodPolicy"] == "Running"
        assert "activeDeadlineSeconds" not in run_policy  # a deadline is not resumable
        assert run_policy["schedulingPolicy"] == {"minAvailable": 4, "queue": "eve-training"}  # gang
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 4
        assert {r["restartPolicy"] for r in replicas.values()} == {"Never"}
    else:
        assert job["spec"]["backoffLimit"] == 0 and "activeDeadlineSeconds" not in job["spec"]
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["onExitCodes"]["values"] == [ExitCode.CONFIG_ERROR]
        assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget"}]
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "eve-training"
    for pod in _pods(manifests):
        pod_spec = pod["spec"]
        container = pod_spec["containers"][0]
        assert pod_spec["restartPolicy"] == "Never"
        # volumes: every path the job uses lies on a mounted ReadWriteMany claim; EVE_HOME on it
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/shared/eve"]["readOnly"] is False and mounts["/models"]["readOnly"] is True
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod_spec["volumes"]}
        assert claims["shared"] == "eve-shared" and claims["models"] == "eve-models"
        for path in spec.shared_paths:
            assert path.startswith(("/shared/eve/", "/models/")), path
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["EVE_HOME"] == "/shared/eve/home" and env["EVE_EXPECTED_GPUS_PER_NODE"] == "8"
        assert container["workingDir"] == "/opt/eve-platform"  # the image's code, not the submitting checkout
        # NCCL environment
        for key, value in PAPER_DISTRIBUTED_ENV.items():
            assert env[key] == value, key
        # container by digest; exit codes passed through: the node supervisor is PID 1
        assert re.fullmatch(r"\S+@sha256:[0-9a-f]{64}", container["image"])
        assert container["command"][:2] == ["bash", "-c"] and "exit \"$workload_code\"" in container["command"][2]
        assert f"--shutdown-timeout={spec.shutdown_timeout_seconds}" in container["command"][2]
        # flush timing: the grace period outlasts torchrun's shutdown timeout
        _flush_chain(spec)
        assert pod_spec["terminationGracePeriodSeconds"] > spec.shutdown_timeout_seconds
        # constraints: A100 nodes, the GPU taint, 8 GPUs and the RDMA NIC, IPC_LOCK for verbs
        assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod_spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8" and limits["rdma/rdma_shared_device_a"] == "1"
        assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]


def test_kubernetes_refuses_what_a_cluster_could_not_run(k8s_jobs):
    params, jobs = k8s_jobs
    _, spec = jobs["2"]
    options = KubernetesOptions(**params.training.backend_options)
    with pytest.raises(ValueError, match="pin it by digest"):
        render_manifests(spec.model_copy(update={"container_image": "registry.example.com/eve-platform:latest"}), options)
    off_volume = spec.model_copy(update={"shared_paths": [*spec.shared_paths, "/home/alice/eve/datasets/caps"]})
    with pytest.raises(ValueError, match="/home/alice/eve/datasets/caps is on no shared volume"):
        render_manifests(off_volume, options)
    # Names are fresh per attempt: a resubmission never collides with the previous object.
    assert render_manifests(spec, options)[0]["metadata"]["name"] != render_manifests(spec, options)[0]["metadata"]["name"]


@pytest.mark.parametrize("workload_exit", [ExitCode.CONFIG_ERROR, ExitCode.REQUEUE, ExitCode.COMPLETED, 3])
def test_the_pod_supervisor_exits_with_the_workloads_code(tmp_path, workload_exit):
    """Run the supervisor a pod would run (2 ranks here) with torchrun for real: the container's
    exit code is the rank's (torchrun alone exits 1 for any failure), so the Job's podFailurePolicy
    and the platform see CONFIG_ERROR and REQUEUE."""
    spec = JobSpec(name="pod", command=[sys.executable, str(WORKLOADS / "exit_with.py"), str(int(workload_exit))],
                   workdir=tmp_path, log_dir=tmp_path / "logs", tasks_per_node=2, container_image="img@sha256:" + "a" * 64,
                   container_python=sys.executable, container_workdir=str(tmp_path), time_limit_minutes=None)
    script = render_node_supervisor(spec, "127.0.0.1", _free_port())
    result = subprocess.run(["bash", "-c", script, "eve-node"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOSTNAME": "pod-0", "PYTHONPATH": str(Path.cwd())})
    assert result.returncode == workload_exit, result.stdout[-2000:] + result.stderr[-2000:]


def _free_port() -> int:
    from eve_model.training.runtime import free_loopback_port

    return free_loopback_port()


def test_eve_retrain_dry_run_writes_every_stage_job(tmp_path, capsys):
    config = tmp_path / "retrain.yaml"
    config.write_text(
        "recipe: paper-slurm\n"
        "arguments: {partition: a100-80g}\n"
        "parameters:\n"
        "  training: {job: {env: {NCCL_SOCKET_IFNAME: ib0}}}\n"
    )
    params = load_retrain_config(config)
    assert params.training.job.partition == "a100-80g" and params.training.job.env["NCCL_SOCKET_IFNAME"] == "ib0"
    assert params.training.job.env["NCCL_IB_HCA"] == "mlx5"  # the rest of the recipe's environment stays
    assert eve(["retrain", "--config", str(config), "--dry-run", "--render", str(tmp_path / "jobs")]) == 0
    for stage in ("1", "2", "3"):
        stage_dir = tmp_path / "jobs" / f"stage-{stage}"
        assert {p.name for p in stage_dir.iterdir()} == {
            "stage_config.json", "deepspeed_config.json", "job_spec.json", "job.sbatch", "summary.txt"}
        assert "#SBATCH --partition=a100-80g" in (stage_dir / "job.sbatch").read_text()
        assert "export NCCL_SOCKET_IFNAME=ib0" in (stage_dir / "job.sbatch").read_text()
    deepspeed = yaml.safe_load((tmp_path / "jobs" / "stage-2" / "deepspeed_config.json").read_text())
    assert deepspeed["train_batch_size"] == 512 and deepspeed["zero_optimization"]["stage"] == 3
    assert "nothing was submitted" in capsys.readouterr().out
    assert eve(["retrain", "--recipe", "paper-k8s", "--dry-run", "--render", str(tmp_path / "k8s")]) == 0
    manifests = list(yaml.safe_load_all((tmp_path / "k8s" / "stage-3" / "manifests.yaml").read_text()))
    assert manifests[0]["kind"] == "PyTorchJob"
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: paper-slurm\nparameters: {training: {job: {gpus_per_node: 8, container_image: null}}}\n")
    assert eve(["retrain", "--config", str(bad), "--dry-run", "--render", str(tmp_path / "no")]) == ExitCode.CONFIG_ERROR
    assert "needs its runtime named" in capsys.readouterr().err
