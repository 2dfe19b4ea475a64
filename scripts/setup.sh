#!/usr/bin/env bash
# Set up gpuctl on a fresh Debian 12 machine (as root): system packages, a virtualenv
# in .venv with gpuctl and its development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh: run as root (the lab needs namespaces and apt packages)" >&2
  exit 1
fi

# openssh-server: sshd for lab nodes; util-linux: unshare/nsenter; the rest: what the
# node probe reads on real machines and what the test suite drives.
# dpkg-dev tools build the lab's apt repositories; rpm, createrepo-c, dnf (with its
# Python bindings and plugins) build and serve the lab's Rocky 9 nodes; gnupg signs the
# air-gapped-mirror test's repository.
# The lab's Slurm (`gpuctl lab slurm up`, the demo's hand-off): Debian's slurmctld, slurmd,
# slurm-client, munge, slurmdbd and the MariaDB behind it; their services are kept from
# starting (the lab runs its own, on its own ports).
packages=(openssh-server openssh-client util-linux iproute2 pciutils python3 python3-venv
          ca-certificates rpm createrepo-c dnf python3-dnf dnf-plugins-core gnupg
          slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
source scripts/apt.sh
apt_install_missing "system packages" "${packages[@]}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# gpuctl with its development tools (the lab extra among them: sushy-tools, the lab's
# Redfish BMCs) and the burn-in extra (the lab's nodes run the agent
# with this environment's Python). The burn-in's torch is pinned to the CPU build of
# 2.13.0 that lies on this machine kind's disk (any newer release would pull a multi-GB
# CUDA build here; GPU nodes bring their own).
.venv/bin/python -m pip install -q -e '.[dev,burnin]' 'torch==2.13.0'
echo "gpuctl $(.venv/bin/gpuctl --version | awk '{print $NF}') ready in $(pwd)/.venv"
