"""Rendering guards: every value that reaches bash is quoted; nothing unvetted can be emitted."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from pydantic import ValidationError

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
    assert "#SBATCH --signal=B:USR1@120" in directives
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


@pytest.mark.parametrize(
    ("rank_codes", "received_signal", "expected"),
    [
        (["0", "0"], "", 0),
        (["75", "0"], "", 75),  # one rank flushed, the other had finished
        (["3", "143"], "", 3),  # a rank's own failure beats the rank torchrun killed afterwards
        (["143", "143"], "", 255),  # killed by signals: a failure, never success
        (["-1"], "", 255),  # garbage is a failure
        (["-1"], "USR1", 75),  # stopped on request before the ranks reported: resumable
        (["143", None], "TERM", 75),
        (["0", "0"], "TERM", 0),  # finished before the stop took effect
        (["2", "75"], "USR1", 2),  # a bad config stays a failure
    ],
)
def test_supervisor_exit_code_aggregation(tmp_path, rank_codes, received_signal, expected):
    supervisor = (INFRA_DIR / "slurm" / "_supervise.sh.j2").read_text()
    block = supervisor[supervisor.index("workload_code=$launcher_code") : supervisor.index("marker_tmp=")]
    for rank, code in enumerate(rank_codes):
        if code is not None:
            (tmp_path / f"rank-{rank}.exit").write_text(code + "\n")
    script = (
        f"marker_dir={shlex.quote(str(tmp_path))}; expected_ranks={len(rank_codes)}; launcher_code=1; "
        f"received_signal={received_signal}\n{block}\necho $workload_code"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == str(expected), result.stderr
