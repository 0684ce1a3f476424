#!/usr/bin/env bash
# The main command of the README: installs what it needs, then runs the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/eve demo "$@"
