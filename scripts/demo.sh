#!/usr/bin/env bash
# Set up, then run the pipeline end to end on a lab of simulated GPU nodes:
# lab up -> scan -> (a GPU falls off the bus) -> re-scan shows drift -> status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GPUCTL_HOME="${GPUCTL_HOME:-$(pwd)/.gpuctl/demo}"
export COLUMNS="${COLUMNS:-140}"
g() { echo; echo "\$ gpuctl $*"; .venv/bin/gpuctl "$@"; }

.venv/bin/gpuctl lab down >/dev/null 2>&1 || true
rm -f "$GPUCTL_HOME/gpuctl.db"*
g init
g lab up --nodes 4 --profile h100-sxm-8 --fault gpu-node-03:pcie-downgrade
g scan --all --accept-new
echo; echo "# a GPU on gpu-node-04 falls off the bus after its first scan"
g lab fault gpu-node-04 gpu-missing
g scan --all
g nodes list
g nodes show gpu-node-04 --events 8
echo
echo "The lab is still up. Explore with: export GPUCTL_HOME=$GPUCTL_HOME; .venv/bin/gpuctl --help"
echo "Stop it with: GPUCTL_HOME=$GPUCTL_HOME .venv/bin/gpuctl lab down"
