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
# The lab's second Slurm release, Debian 13's 24.11, in a root of its own (debootstrap).
bash scripts/lab-debian13.sh
export PATH="$(pwd)/.venv/bin:$PATH"
echo "== ruff"; ruff check provisioner tests benchmarks
echo "== vagrant validate"; vagrant validate --ignore-provider
# mypy and ansible-lint (about a minute of one core) run beside the tests, niced: the
# suite leaves a core idle while it waits on its nodes. Their output and verdict come
# after the tests'.
lint_dir=$(mktemp -d)
trap 'rm -rf "$lint_dir"' EXIT
(nice -n 10 mypy provisioner > "$lint_dir/mypy" 2>&1; echo $? > "$lint_dir/mypy.rc") &
(cd playbooks && nice -n 10 ansible-lint --profile production --nocolor provision.yml \
  > "$lint_dir/ansible-lint" 2>&1; echo $? > "$lint_dir/ansible-lint.rc") &
lints_done() {
  wait
  local rc=0 name
  for name in mypy ansible-lint; do
    echo "== $name"; cat "$lint_dir/$name"
    [ "$(cat "$lint_dir/$name.rc")" = 0 ] || rc=1
  done
  return "$rc"
}
# The suite runs in two pytest-xdist workers (GPUCTL_TEST_WORKERS): most of a test's
# time is spent waiting on its lab nodes, sshd and Ansible, so two share two cores well.
# Each worker takes its own lab address blocks (tests/e2e/conftest.py); each test file
# runs whole on one worker (--dist loadfile), so a lab one module sets up for all its
# tests is set up once; files go out longest first (tests/conftest.py LONGEST_FIRST; xdist
# would otherwise send the files with most tests first, and the two-test Slurm file last). (pytest-xdist 3.8's xdist_group marks do nothing under pytest 9:
# its loadgroup renames items' node ids, which pytest 9 no longer reads.) The base
# temporary directory is short: a lab Slurm's MariaDB socket lives under a test's
# directory, and a socket path has 107 bytes at most.
workers=${GPUCTL_TEST_WORKERS:-2}
# A run that selected no test is a failure here, not a pass.
run_pytest() {
  local basetemp; basetemp=$(mktemp -d /tmp/gt.XXXXXX)
  # The slowest tests are listed at the end: where CI time goes.
  set +e
  pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder --basetemp "$basetemp" \
    --durations=15 "$@"
  local rc=$?; set -e
  # Kept when something failed: the tests' homes, logs and lab nodes' files.
  [ "$rc" -ne 0 ] || rm -rf --one-file-system "$basetemp" || echo "kept $basetemp" >&2
  [ "$rc" -eq 5 ] && { echo "pytest ran no test" >&2; return 1; }
  return "$rc"
}
echo "== pytest (SQLite)"
set +e; run_pytest "$@"; tests_rc=$?; set -e
if [ "$tests_rc" -ne 0 ]; then lints_done || true; exit "$tests_rc"; fi
if [ $# -eq 0 ]; then
  # What touches the database once more, against a real PostgreSQL server the suite
  # starts itself: the end-to-end runs (scan, provision, burn-in, crash recovery with
  # two control hosts, concurrent writers, hardening), the schema, the run scaffold and
  # doctor's read-only look at the schema.
  # Left out, as they read or write no more than on SQLite: the agent alone, the lab
  # alone, the report in a browser, the dashboard in tmux, hostile input files, the
  # playbook- and profile-behaviour tests of scan and provision (test_provision_real.py;
  # check mode, Ctrl-C and the failures-and-rescan tour, whose database writes -- task
  # results, states, events, locks -- test_recovery.py's provision killed mid-run and
  # test_provision.py's lock test make on PostgreSQL too), and the burn-in's
  # verdict tests (test_burnin*.py and test_hardening.py's health checks failing closed:
  # burn-in's database writes are the run scaffold's, which test_recovery.py and
  # test_hardening.py exercise with burn-ins killed mid-run), and the wheel, doctor
  # (but its healthy run) and hardening round 3 (files, parsers, SSH deadlines).
  echo "== pytest (PostgreSQL)"
  GPUCTL_TEST_DB=postgresql run_pytest tests/e2e/test_scan.py tests/e2e/test_provision.py \
    tests/e2e/test_recovery.py tests/e2e/test_db_concurrent.py \
    tests/e2e/test_hardening.py tests/unit/test_migrations.py tests/unit/test_runs.py \
    tests/e2e/test_doctor.py::test_a_healthy_control_host_passes \
    tests/unit/test_fleet.py -k "not become_password and not test_profiles and not \
huge_command_output and not export_is and not check_mode and not sigint_stops and not \
failures_rescan and not health_checks_fail_closed"
fi
lints_done
