#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check CI runs: ruff, mypy, the whole test suite
# including the slow end-to-end tests against lab nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check provisioner tests benchmarks
echo "== mypy"; .venv/bin/mypy provisioner
echo "== pytest"; .venv/bin/pytest -q "$@"
