#!/usr/bin/env bash
# Set up, then run the pipeline end to end on a lab of simulated 8xH100 nodes:
# lab up -> scan -> provision -> re-scan -> provision again (no-op) -> burn-in -> report
# -> drift -> hand-off to the lab's real Slurm with a smoke job -> pools Slurm enforces ->
# monitor drains a node that breaks -> another heals itself through its BMC -> status ->
# the runs.
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
echo; echo "# nine bare servers, as racked: no NVIDIA driver, nouveau loaded; some have problems"
g lab up --nodes 9 --profile h100-sxm-8 --slurm \
  --fault gpu-node-04:pcie-downgrade \
  --fault gpu-node-05:package-install-failure \
  --fault gpu-node-06:fabricmanager-mismatch \
  --fault gpu-node-07:sdc
g scan --all --accept-new
echo; echo "# gpu-node-04 is quarantined (x8 link), so --all provisions the other eight"
g3 provision --all
g scan --all
echo; echo "# a second provision of a healthy node changes nothing"
g provision gpu-node-01
echo; echo "# faults that only show under load: an XID and a dead NVLink link"
g lab fault gpu-node-08 xid
g lab fault gpu-node-09 nvlink-down
echo; echo "# burn-in, one node at a time (lab nodes share this machine's CPU), then an"
echo "# all-reduce across the nodes that passed"
g3 burnin --all --duration 0.5 --parallel 1 --multinode
g report
g report --format html -o "$GPUCTL_HOME/burnin-report.html"
echo; echo "# later, a GPU on gpu-node-03 falls off the bus"
g lab fault gpu-node-03 gpu-missing
g3 scan --all
g nodes show gpu-node-03 --events 4
echo; echo "# the certified nodes go to the lab's real Slurm (slurmctld, slurmd, munge,"
echo "# slurmdbd): into slurm.conf/gres.conf, registered IDLE with their GPUs, then a"
echo "# training smoke job through sbatch/srun torchrun before they count as in service"
eval "$(.venv/bin/gpuctl lab slurm env)"
g handoff slurm --apply --slurm-conf-dir "$GPUCTL_HOME/lab/slurm/etc" --partition h100 --smoke
echo; echo "\$ sinfo -N -o '%N %P %T %G'"; sinfo -N -o '%N %P %T %G'
echo; echo "# a team (Slurm account vision) gets a 4-GPU slice: only its jobs may use the"
echo "# pool's partition, and Slurm enforces the size (QOS GrpTRES=gres/gpu=4)"
echo "\$ sacctmgr -i add account vision; sacctmgr -i add user root account=vision"
sacctmgr -i add account vision cluster=gpuctl-lab >/dev/null
sacctmgr -i add user root account=vision cluster=gpuctl-lab >/dev/null
g pool create vision-team --sku h100-sxm-8 --gpus 4 --accounts vision
g pool assign vision-team --gpus 4
g pool show vision-team
echo "\$ sbatch -p pool-vision-team --account=vision --gres=gpu:8 --wrap true"
(cd /tmp && sbatch -p pool-vision-team --account=vision --gres=gpu:8 --wrap true) || true
echo; echo "# in service, a GPU on gpu-node-02 starts reporting uncorrectable ECC errors:"
echo "# one monitor pass quarantines it and drains it in Slurm with the reason"
g lab fault gpu-node-02 ecc-uncorrectable
g3 monitor
echo; echo "\$ sinfo -N -o '%N %T %E'"; sinfo -N -o '%N %T %E' | sort -u
echo; echo "# gpu-node-01's GPU falls off the bus in service (XID 79). One monitor pass with"
echo "# --remediate closes the loop: it drains the node, reboots it, power-cycles it through"
echo "# its BMC when the reboot does not clear it, scans it, burns it in again and gives it"
echo "# back to Slurm; gpu-node-02's ECC errors are a part to replace: RMA, still drained"
g lab fault gpu-node-01 gpu-lost
g3 monitor --remediate --burnin-duration 0.5 --boot-timeout 90s
g nodes show gpu-node-01 --events 8
echo; echo "\$ sinfo -N -o '%N %T %E'"; sinfo -N -o '%N %T %E' | sort -u
g status
echo; echo "# every run of the demo, with its outcome"
g runs list --limit 12
echo
echo "The lab is still up. Explore with: export GPUCTL_HOME=$GPUCTL_HOME; .venv/bin/gpuctl --help"
echo "Stop it with: GPUCTL_HOME=$GPUCTL_HOME .venv/bin/gpuctl lab down"
