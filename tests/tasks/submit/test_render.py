"""Rendering guards: every value that reaches bash is quoted; nothing unvetted can be emitted."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from eve_model.exit_codes import ExitCode
from tasks.submit.k8s import KubernetesOptions, VolumeClaim, render_manifests
from tasks.submit.local import render_local_script
from tasks.submit.render import INFRA_DIR, UnquotedValueError, shell_template_environment
from tasks.submit.slurm import render_sbatch_script
from tasks.submit.spec import JobSpec

HOSTILE = "run $(touch {p}) `touch {p}`; touch {p} 'q\" \\ {{x}}\nline2"


def _spec(tmp_path, **overrides) -> JobSpec:
    pwned = tmp_path / "pwned"
    fields = dict(
        name=HOSTILE.format(p=pwned),
        command=[sys.executable, "-m", "eve_model.train", str(tmp_path / f"cfg $(touch {pwned}).json")],
        workdir=tmp_path / "work $(touch x)",
        log_dir=tmp_path / "logs; touch y",
        env={"NOTE": HOSTILE.format(p=pwned)},
        secret_env_names=["WANDB_API_KEY"],
        nodes=2,
        tasks_per_node=2,
        partition="gpu",
        account="eve-team",
    )
    fields.update(overrides)
    return JobSpec(**fields)


@pytest.mark.parametrize("renderer", ["sbatch", "local"])
def test_rendered_scripts_parse_and_hostile_values_come_back_verbatim(tmp_path, monkeypatch, renderer):
    monkeypatch.setenv("WANDB_API_KEY", "secret-value-xyz")
    spec = _spec(tmp_path, nodes=1) if renderer == "local" else _spec(tmp_path)
    script = render_sbatch_script(spec) if renderer == "sbatch" else render_local_script(spec, "local-test", 29500)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "secret-value-xyz" not in script
    # Evaluate the export lines the script would run: values arrive exactly, nothing executes.
    # (the export block runs from the job name to the secret check; quoted values may span lines)
    exports = script[script.index("export EVE_JOB_NAME=") : script.index("# Secret WANDB_API_KEY")]
    shown = subprocess.run(["bash", "-c", exports + '\nprintf "%s\\0%s" "$EVE_JOB_NAME" "$NOTE"'],
                           capture_output=True, text=True, cwd=tmp_path)
    assert shown.stdout.split("\0") == [spec.name, spec.env["NOTE"]]
    assert not list(tmp_path.rglob("pwned")) and not (tmp_path / "x").exists()


def test_sbatch_directives_carry_only_plain_tokens(tmp_path):
    script = render_sbatch_script(_spec(tmp_path))
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --job-name=run-touch-" in "\n".join(directives)
    for line in directives:
        assert re.fullmatch(r"#SBATCH --[a-z-]+(=[A-Za-z0-9_.,:=@+\-/\[\]|&()!*]+)?", line), line
    assert f"#SBATCH --signal=B:USR1@{_spec(tmp_path).signal_lead_seconds}" in directives
    assert "#SBATCH --nodes=2" in directives and "#SBATCH --cpus-per-task=2" in directives


@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint"])
def test_scheduler_fields_refuse_directive_breaking_values(tmp_path, field):
    with pytest.raises(ValidationError):
        _spec(tmp_path, **{field: "gpu\n#SBATCH --uid=0"})
    with pytest.raises(ValidationError):
        _spec(tmp_path, **{field: "gpu $(id)"})


def test_template_cannot_emit_an_unquoted_string():
    environment = shell_template_environment(INFRA_DIR / "slurm")
    with pytest.raises(UnquotedValueError):
        environment.from_string("echo {{ name }}").render(name="$(touch /tmp/x)")
    assert environment.from_string("echo {{ name | shquote }}").render(name="$(x)") == f"echo {shlex.quote('$(x)')}"
    assert environment.from_string("n={{ count }}").render(count=3) == "n=3"


def test_env_names_must_be_identifiers(tmp_path):
    with pytest.raises(ValidationError):
        _spec(tmp_path, env={"A=1; touch x; B": "v"})
    with pytest.raises(ValidationError):
        _spec(tmp_path, secret_env_names=["KEY$(id)"])


def _aggregate(tmp_path, rank_codes: list[str | None], received_signal: str) -> str:
    """Run the rendered supervisor's exit-code aggregation on the given per-rank exit codes."""
    spec = JobSpec(name="agg", command=["true"], workdir=tmp_path, log_dir=tmp_path / "logs")
    supervisor = render_local_script(spec, "local-test", 29500)
    block = supervisor[supervisor.index("workload_code=$launcher_code") : supervisor.index("marker_tmp=")]
    marker_dir = tmp_path / f"markers-{len(list(tmp_path.glob('markers-*')))}"
    marker_dir.mkdir()
    for rank, code in enumerate(rank_codes):
        if code is not None:
            (marker_dir / f"rank-{rank}.exit").write_text(code + "\n")
    script = (
        f"marker_dir={shlex.quote(str(marker_dir))}; expected_ranks={len(rank_codes)}; launcher_code=1; "
        f"received_signal={received_signal}\n{block}\necho $workload_code"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


C = ExitCode


@pytest.mark.parametrize(
    ("rank_codes", "received_signal", "expected"),
    [
        ([C.COMPLETED, C.COMPLETED], "", C.COMPLETED),
        ([C.REQUEUE, C.COMPLETED], "", C.REQUEUE),  # one rank flushed, the other had finished
        (["3", "143"], "", 3),  # a rank's own failure beats the rank torchrun killed afterwards
        (["143", "143"], "", C.RANK_KILLED),  # killed by signals: a failure, never success
        (["-1"], "", C.RANK_KILLED),  # garbage is a failure
        (["-1"], "USR1", C.REQUEUE),  # stopped on request before the ranks reported: resumable
        (["143", None], "TERM", C.REQUEUE),
        ([C.COMPLETED, C.COMPLETED], "TERM", C.COMPLETED),  # finished before the stop took effect
        ([C.CONFIG_ERROR, C.REQUEUE], "USR1", C.CONFIG_ERROR),  # a bad config stays a failure
    ],
)
def test_supervisor_exit_code_aggregation(tmp_path, rank_codes, received_signal, expected):
    codes = [None if code is None else str(int(code)) for code in rank_codes]
    assert _aggregate(tmp_path, codes, received_signal) == str(int(expected))


# ---- exit codes: the templates carry none of their own ---------------------------------------

MOVED_EXIT_CODES = {"COMPLETED": 0, "FAILED": 9, "CONFIG_ERROR": 42, "REQUEUE": 176, "RANK_KILLED": 254}
"""Every code but COMPLETED moved (0 is success to every scheduler). REQUEUE goes above 128, where a
template that still matched 75 would count it as a killed rank instead of a flushed one."""

TEMPLATES = sorted((INFRA_DIR / "slurm").glob("*.j2")) + sorted((INFRA_DIR / "k8s").glob("*.j2"))


@pytest.fixture
def moved_exit_codes(monkeypatch):
    assert MOVED_EXIT_CODES.keys() == ExitCode.template_values().keys()
    monkeypatch.setattr(ExitCode, "template_values", classmethod(lambda cls: dict(MOVED_EXIT_CODES)))
    return MOVED_EXIT_CODES


def _rendered_texts(tmp_path) -> dict[str, str]:
    spec = JobSpec(name="codes", command=["true"], workdir=tmp_path, log_dir=tmp_path / "logs", nodes=1,
                   container_image="ghcr.io/eve-platform/train:test")
    texts = {"local_stage.sh.j2": render_local_script(spec, "local-test", 29500), "stage.sbatch.j2": render_sbatch_script(spec)}
    for kind in ("pytorchjob", "indexed-job"):
        texts[f"{kind}.yaml.j2"] = yaml.safe_dump_all(render_manifests(spec, _k8s_options(tmp_path, kind)))
    return texts


def _k8s_options(tmp_path, kind: str) -> KubernetesOptions:
    return KubernetesOptions(kind=kind, require_image_digest=False,
                             volumes=[VolumeClaim(name="work", claim="work", mount_path=str(tmp_path))])


def test_templates_write_no_exit_code_as_a_number():
    """At the rule sites of the template sources (``exit N``, a ``case`` arm, an exit-code list, the
    supervisor's code variables) only ``exit_code.<NAME>`` may stand, never a literal."""
    assert {t.name for t in TEMPLATES} >= {"_supervise.sh.j2", "local_stage.sh.j2", "stage.sbatch.j2",
                                           "_pod_spec.yaml.j2", "indexed-job.yaml.j2", "pytorchjob.yaml.j2",
                                           "node_supervisor.sh.j2"}
    rule_sites = [
        r"\bexit\s+\d",  # exit 2
        r"^\s*\d+\)",  # a case arm: 75)
        r"(?:values|onExitCodes)\s*:\s*\[?\s*\d",  # podFailurePolicy exit codes
        r"(?:workload_code|flushed|killed)=\d",  # the supervisor's aggregation
        r"\$\{(?:own_failure|flushed|killed):-\d",  # ${killed:-255}
        r"!=\s*\d",  # [ "$workload_code" != 0 ]
        r"\b(?:75|255)\b",  # REQUEUE and RANK_KILLED anywhere, comments included
    ]
    for template in TEMPLATES:
        for number, line in enumerate(template.read_text().splitlines(), 1):
            for pattern in rule_sites:
                assert not re.search(pattern, line), f"{template.name}:{number}: literal exit code in {line.strip()!r}"


def test_rendered_jobs_take_their_exit_codes_from_the_enum(tmp_path, moved_exit_codes):
    """Rendered with every code moved, the jobs follow: a hard-coded number anywhere fails this."""
    texts = _rendered_texts(tmp_path)
    for name, text in texts.items():
        for old in ("75", "255"):
            assert not re.search(rf"\b{old}\b", text), f"{name} still says {old}"
        for code in re.findall(r"\bexit\s+(\d+)", text):
            assert int(code) in moved_exit_codes.values(), f"{name}: exit {code}"
    for name in ("local_stage.sh.j2", "stage.sbatch.j2"):
        assert f"|| exit {moved_exit_codes['CONFIG_ERROR']}" in texts[name]  # workdir missing: a config error
    job = [m for m in render_manifests(JobSpec(name="codes", command=["true"], workdir=tmp_path, log_dir=tmp_path,
                                               container_image="ghcr.io/eve-platform/train:test"),
                                       _k8s_options(tmp_path, "indexed-job")) if m["kind"] == "Job"][0]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert [r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r] == [[moved_exit_codes["CONFIG_ERROR"]]]
    # The supervisor's aggregation follows the moved codes too.
    moved = {name: str(value) for name, value in moved_exit_codes.items()}
    assert _aggregate(tmp_path, [moved["REQUEUE"], "0"], "") == moved["REQUEUE"]
    assert _aggregate(tmp_path, ["143", moved["REQUEUE"]], "") == moved["REQUEUE"]
    assert _aggregate(tmp_path, ["143", "143"], "") == moved["RANK_KILLED"]
    assert _aggregate(tmp_path, ["-1"], "USR1") == moved["REQUEUE"]
    assert _aggregate(tmp_path, [moved["CONFIG_ERROR"], moved["REQUEUE"]], "TERM") == moved["CONFIG_ERROR"]


def test_rendered_jobs_carry_the_real_exit_codes(tmp_path):
    texts = _rendered_texts(tmp_path)
    assert f"|| exit {int(ExitCode.CONFIG_ERROR)}" in texts["local_stage.sh.j2"]
    assert f"{int(ExitCode.REQUEUE)}) flushed={int(ExitCode.REQUEUE)} ;;" in texts["stage.sbatch.j2"]
    assert f"killed=${{killed:-{int(ExitCode.RANK_KILLED)}}}" in texts["local_stage.sh.j2"]
    job = yaml.safe_load_all(texts["indexed-job.yaml.j2"])
    rules = [d for d in job if d["kind"] == "Job"][0]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [ExitCode.CONFIG_ERROR]


def test_no_time_limit_renders_no_limit(tmp_path):
    spec = JobSpec(name="open-ended", command=["true"], workdir=tmp_path, log_dir=tmp_path / "logs", time_limit_minutes=None,
                   container_image="ghcr.io/eve-platform/train:test")
    local = render_local_script(spec, "local-test", 29500)
    assert "sleep" not in local and "timeout-$job_id" not in local and "kill -USR1 $$" not in local
    assert subprocess.run(["bash", "-n"], input=local, text=True).returncode == 0
    assert "#SBATCH --time" not in render_sbatch_script(spec)
    limited = render_local_script(spec.model_copy(update={"time_limit_minutes": 2, "pre_timeout_signal_seconds": 30}), "l", 1)
    assert "sleep 90 && kill -USR1" in limited and "sleep 120 &&" in limited
    for kind in ("pytorchjob", "indexed-job"):
        assert "activeDeadlineSeconds" not in yaml.safe_dump_all(render_manifests(spec, _k8s_options(tmp_path, kind)))
