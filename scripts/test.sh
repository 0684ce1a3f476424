#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs the whole suite
# (slow multi-process drills included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh

# System packages for the real-service tests: a SLURM cluster with accounting (slurmdbd on MariaDB),
# headless Chromium, Graphviz (lineage pictures), ssh-keygen (openssh-client) for `git tag -v` on
# the registry's signed tags, and a real image-caption set (the Tux Paint stamps, photos and
# drawings with their authors' descriptions) for the own-data retrain.
need=()
for pkg in munge slurmctld slurmd slurm-client slurmdbd mariadb-server chromium graphviz openssh-client tuxpaint-stamps-default; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if (( ${#need[@]} )); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "[test] apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "[test] not root: cannot install ${need[*]}; tests that need them will fail" >&2
  fi
fi

export EVE_HOME="${EVE_HOME:-$(mktemp -d -t eve-test-home.XXXXXX)}"
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is not a pass.
if [[ $status -eq 5 ]]; then
  echo "[test] pytest collected no tests" >&2
  exit 1
fi
exit $status
