#!/bin/bash
# The checks a session with a lent GPU runs, in one go (see the README's burn-in section):
# the burn-in agent's quick level on this machine's GPUs, then the SDC checks on real
# cuBLAS: transient faults injected into the GEMM, healthy runs (false positives), and
# the checks' cost against the bare loop. Writes the agent's document to $OUT.
#   bash benchmarks/gpu_check.sh [python3]
set -u
py=${1:-python3}
out=${OUT:-/tmp/gpuctl-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,ecc.mode.current \
    --format=csv
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
start=$(date +%s)
"$py" provisioner/burnin/agent.py --level quick --seed 11 --seconds 3 \
    >"$out/agent-quick.json" 2>"$out/agent-quick.err"
echo "agent exit $? after $(( $(date +%s) - start )) s"
tail -3 "$out/agent-quick.err"
"$py" - "$out/agent-quick.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("backend", doc["backend"], "gpus", doc["gpus"], "seed", doc["seed"])
print("devices", doc["devices"])
for r in doc["results"]:
    d = r["detail"]
    keep = {k: d[k] for k in ("iterations", "repeat_checks", "repeat_mismatches",
                              "repeat_words_wrong", "freivalds_ratio", "reference_ratio",
                              "reference_elements", "relative_error", "errors", "patterns",
                              "numa_node", "wrong_copies", "error", "pci_bus_id")
            if k in d}
    print(f"{r['test']:<18} {r['device']!s:>4} {r['value'] or 0:>10.4g} {r['unit']:<7} "
          f"ok={r['ok']} {keep}")
print("telemetry", doc["telemetry"]["source"], len(doc["telemetry"]["samples"]), "samples;",
      "kernel log", doc["health"]["after"]["kernel_log"])
PY
"$py" benchmarks/sdc.py --overhead-only --gpu-trials ${GPU_TRIALS:-12} --seconds ${SECONDS_EACH:-2} --rounds 3 ${N_ARG:-}
echo "total $(( $(date +%s) - start )) s"
