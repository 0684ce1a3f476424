#!/usr/bin/env bash
# Creates or refreshes .venv with the locked environment. Idempotent and fast when nothing
# changed: a stamp holds the hash of pyproject.toml + constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp=.venv/.eve-bootstrap-stamp
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "[bootstrap] installing the locked environment into .venv (first time: ~3 minutes)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
# torch first and pinned: on this kind of machine pip finds the CPU wheel on disk; an
# unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
echo "$want" > "$stamp"
echo "[bootstrap] done"
