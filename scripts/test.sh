#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check CI runs: ruff, mypy, the whole test suite
# including the slow end-to-end tests against lab nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Test-only tool: Vagrant, to validate the Vagrantfile (no VM is started).
if ! command -v vagrant >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends vagrant >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends vagrant >/dev/null; }
fi
export PATH="$(pwd)/.venv/bin:$PATH"
echo "== ruff"; ruff check provisioner tests benchmarks
echo "== mypy"; mypy provisioner
echo "== ansible-lint (production profile)"; (cd playbooks && ansible-lint --profile production --nocolor provision.yml)
echo "== vagrant validate"; vagrant validate --ignore-provider
echo "== pytest"
set +e
pytest -q "$@"
rc=$?
set -e
# A run that selected no test is a failure here, not a pass.
[ "$rc" -eq 5 ] && { echo "pytest ran no test" >&2; exit 1; }
exit "$rc"
