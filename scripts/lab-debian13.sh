#!/usr/bin/env bash
# The lab's second Slurm release (tests/e2e/test_slurm.py runs on both): a Debian 13
# (trixie) root with Debian's own Slurm 24.11 packages -- slurmctld, slurmd,
# slurm-client, slurmdbd, munge -- plus the shared libraries the jobs' Python (this
# machine's) loads, made with debootstrap. The lab runs its programs from this root
# (provisioner/lab/slurm.py). Safe to run again: a complete root is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${GPUCTL_LAB_DEBIAN13_ROOT:-/var/lib/gpuctl-lab/debian13}
if [ -f "$root/.gpuctl-complete" ] && [ -x "$root/usr/sbin/slurmctld" ]; then
  exit 0
fi
source scripts/apt.sh
apt_install_missing "debootstrap" debootstrap
packages=(slurmctld slurmd slurm-client slurmdbd munge
          libffi8 libssl3t64 libsqlite3-0 libbz2-1.0 liblzma5 libncursesw6 libreadline8t64
          libuuid1 libstdc++6 libexpat1 libnsl2 libtirpc3t64 libcrypt1)
tmp="$root.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
echo "== Debian 13 root with Slurm 24.11 for the lab: $root"
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" trixie "$tmp" \
  http://deb.debian.org/debian > "$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; exit 1; }
chroot "$tmp" dpkg-query -W slurmctld
touch "$tmp/.gpuctl-complete"
rm -rf "$root" "$tmp.log"
mv "$tmp" "$root"
