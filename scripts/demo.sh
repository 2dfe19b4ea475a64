#!/usr/bin/env bash
# Set up, then run the pipeline end to end on a lab of simulated 8xH100 nodes:
# lab up -> scan -> provision -> re-scan -> provision again (no-op) -> drift -> status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GPUCTL_HOME="${GPUCTL_HOME:-$(pwd)/.gpuctl/demo}"
export COLUMNS="${COLUMNS:-150}"
g() { echo; echo "\$ gpuctl $*"; .venv/bin/gpuctl "$@"; }
# Exit status 3 means "some nodes failed", which this demo shows on purpose.
g3() { g "$@" || [ $? -eq 3 ]; }

.venv/bin/gpuctl lab down >/dev/null 2>&1 || true
rm -rf "$GPUCTL_HOME"
g init
echo; echo "# five bare servers, as racked: no NVIDIA driver, nouveau loaded; three have problems"
g lab up --nodes 5 --profile h100-sxm-8 \
  --fault gpu-node-03:pcie-downgrade \
  --fault gpu-node-04:package-install-failure \
  --fault gpu-node-05:fabricmanager-mismatch
g scan --all --accept-new
echo; echo "# gpu-node-03 is quarantined (x8 link), so --all provisions the other four"
g3 provision --all
g scan --all
echo; echo "# a second provision of the healthy nodes changes nothing"
g provision gpu-node-01 gpu-node-02
echo; echo "# later, a GPU on gpu-node-02 falls off the bus"
g lab fault gpu-node-02 gpu-missing
g3 scan --all
g nodes list
g nodes show gpu-node-04 --events 5
echo
echo "The lab is still up. Explore with: export GPUCTL_HOME=$GPUCTL_HOME; .venv/bin/gpuctl --help"
echo "Stop it with: GPUCTL_HOME=$GPUCTL_HOME .venv/bin/gpuctl lab down"
