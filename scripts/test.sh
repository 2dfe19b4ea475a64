#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check CI runs: ruff, mypy, the whole test suite
# including the slow end-to-end tests against lab nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Test-only tools: Vagrant (validates the Vagrantfile; no VM is started), Chromium (opens
# the HTML report), tmux (drives `gpuctl status --watch`), PostgreSQL (the e2e suite runs
# once against a real server it starts itself) and promtool (package prometheus; checks
# the metrics hand-off). Their services are kept from starting: the tests start their own.
test_packages=(vagrant chromium tmux postgresql prometheus)
source scripts/apt.sh
apt_install_missing "test tools" "${test_packages[@]}"
export PATH="$(pwd)/.venv/bin:$PATH"
echo "== ruff"; ruff check provisioner tests benchmarks
echo "== mypy"; mypy provisioner
echo "== ansible-lint (production profile)"; (cd playbooks && ansible-lint --profile production --nocolor provision.yml)
echo "== vagrant validate"; vagrant validate --ignore-provider
# A run that selected no test is a failure here, not a pass.
run_pytest() {
  set +e; pytest -q "$@"; local rc=$?; set -e
  [ "$rc" -eq 5 ] && { echo "pytest ran no test" >&2; return 1; }
  return "$rc"
}
echo "== pytest (SQLite)"
run_pytest "$@"
if [ $# -eq 0 ]; then
  # The end-to-end tests (and the schema check and the run scaffold's recovery) once
  # more, against a real PostgreSQL server the suite starts itself.
  echo "== pytest (PostgreSQL)"
  GPUCTL_TEST_DB=postgresql run_pytest tests/e2e tests/unit/test_migrations.py \
    tests/unit/test_runs.py
fi
