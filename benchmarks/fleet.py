"""The burn-in's fleet comparison: detection and false-positive rates, per measurement
against by part, on the same runs.

    sudo .venv/bin/python benchmarks/fleet.py [--nodes 8] [--rounds 8] [--parallel 2]

Brings up ``--nodes`` h100-sxm-8 lab nodes with the driver; the last one has lab fault
``slow-node`` (every GPU at an eighth of the speed, all alike, so only the fleet can
show it). Runs ``gpuctl burnin --all --duration 0.2 --parallel P`` ``--rounds`` times,
P nodes at once sharing this machine's cores as in CI, and judges each run's per-GPU
throughput against the run's fleet medians two ways:

  measurement  each GPU's each test below ``fleet_outlier_fraction`` x its median (the
               rule before CI stop 17 failed a healthy GPU on one bfloat16 reading)
  part         each GPU's part (the four GEMM dtypes, geometric mean; memory bandwidth)
               below the fraction (``thresholds.fleet_outlier_verdicts``, the rule now)

Prints, per rule: healthy node-runs flagged (false positives), slow-node runs flagged on
any GPU (detected) and on every GPU (named whole), the lowest ratio any healthy GPU
reached and the highest any slow-node GPU reached (each rule's margin either side of
the fraction), and each run's exit code. The
fraction is the CPU lab's (0.30, ``inventory/thresholds/cpu-lab.yml``). Everything runs
against lab nodes on 127.0.202.0/24 in a throw-away GPUCTL_HOME.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Any

from scan import driver_lab, gpuctl  # type: ignore[import-not-found]
from sqlmodel import select

from provisioner.burnin.thresholds import GPU_OUTLIER_TESTS, fleet_medians, slow_parts
from provisioner.cli import main as _gpuctl
from provisioner.db.models import Node
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, transition

FRACTION = 0.30
PER_GPU = GPU_OUTLIER_TESTS


def gpuctl_json(argv: list[str]) -> tuple[int, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _gpuctl(argv)
    return code, json.loads(out.getvalue())


def back_to_provisioned(gc: Gpuctl) -> None:
    """Every node to ``provisioned`` by its legal transitions, so each round burns in the
    same nodes (a quarantined one by release, as an admin would)."""
    paths = {State.DISCOVERED: [State.PROVISIONING, State.PROVISIONED],
             State.QUARANTINED: [State.DISCOVERED, State.PROVISIONING, State.PROVISIONED],
             State.FAILED: [State.PROVISIONING, State.PROVISIONED]}
    with gc.session() as session:
        for node in session.exec(select(Node)):
            for state in paths.get(State(node.state), []):
                transition(session, node, state, actor="benchmark", reason="benchmark round")


def measured(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each node's per-GPU and node-wide throughput measurements from ``burnin --json``."""
    return {n["name"]: [{"test": r["test"], "device": r.get("device"), "value": r["value"]}
                        for r in n.get("results", []) if isinstance(r.get("value"), (int, float))
                        and (r["test"] in PER_GPU or r["test"].endswith("_busbw"))]
            for n in doc["nodes"]}


def ratios(rule: str, results: list[dict[str, Any]], medians: dict[str, float]
           ) -> dict[int, float]:
    """Each GPU's lowest ratio to the fleet under ``rule``: its lowest measurement over
    the test's median, or its lowest part (geometric mean over the part's tests)."""
    if rule == "part":  # the comparison gpuctl makes (fleet_outlier_verdicts), every part
        out: dict[int, float] = {}
        for _, device, ratio, _ in slow_parts(results, medians, PER_GPU, float("inf")):
            out[device] = min(out.get(device, ratio), ratio)
        return out
    lowest: dict[int, float] = {}
    for r in results:
        if r["test"] in PER_GPU and medians.get(r["test"]) and r["device"] is not None:
            ratio = r["value"] / medians[r["test"]]
            lowest[r["device"]] = min(lowest.get(r["device"], ratio), ratio)
    return lowest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    faulty = f"gpu-node-{args.nodes:02d}"
    rules = ("measurement", "part")
    tally = {rule: {"fp": 0, "detected": 0, "whole": 0} for rule in rules}
    healthy_low = {rule: 1e9 for rule in rules}
    faulty_high = {rule: 0.0 for rule in rules}
    healthy_runs = faulty_runs = 0
    with driver_lab(args.nodes, "127.0.202.10"):
        if gpuctl(["scan", "--all", "--accept-new", "--json"]) != 0 or \
                gpuctl(["lab", "fault", faulty, "slow-node"]) != 0:
            raise SystemExit("scan or lab fault failed")
        gc = Gpuctl.from_env()
        for r in range(args.rounds):
            back_to_provisioned(gc)
            code, doc = gpuctl_json(["burnin", "--all", "--duration", "0.2", "--parallel",
                                     str(args.parallel), "--json"])
            per_node = measured(doc)
            medians = fleet_medians(list(per_node.values()))
            line = []
            for rule in rules:
                low = {name: ratios(rule, results, medians)
                       for name, results in per_node.items()}
                hits = {name: {d for d, x in mine.items() if x < FRACTION}
                        for name, mine in low.items()}
                for name, mine in low.items():
                    if name == faulty and mine:
                        faulty_high[rule] = max(faulty_high[rule], max(mine.values()))
                    elif mine:
                        healthy_low[rule] = min(healthy_low[rule], min(mine.values()))
                gpus = {r["device"] for r in per_node.get(faulty, []) if r["test"] in PER_GPU}
                tally[rule]["fp"] += sum(1 for n, h in hits.items() if n != faulty and h)
                tally[rule]["detected"] += bool(hits.get(faulty))
                tally[rule]["whole"] += bool(gpus) and hits.get(faulty) == gpus
                fps = sorted(f"{n}:GPU{sorted(h)}" for n, h in hits.items() if n != faulty and h)
                line.append(f"{rule}: slow node {len(hits.get(faulty, ()))}/{len(gpus)} GPUs, "
                            f"false positives {fps or 'none'}")
            healthy_runs += len(per_node) - (faulty in per_node)
            faulty_runs += faulty in per_node
            print(f"round {r + 1}: exit {code}; " + "; ".join(line), flush=True)
    print(f"\n{args.rounds} runs of {args.nodes} nodes, {args.parallel} at once, fraction "
          f"{FRACTION}:")
    print(f"{'rule':<12} {'false positives':>24} {'detected':>14} {'every GPU named':>16} "
          f"{'lowest healthy GPU':>19} {'highest slow GPU':>17}")
    for rule in rules:
        t = tally[rule]
        print(f"{rule:<12} {t['fp']:>6} / {healthy_runs:<3} healthy node-runs "
              f"{t['detected']:>5} / {faulty_runs:<3} {t['whole']:>9} / {faulty_runs:<3} "
              f"{healthy_low[rule]:>19.2f} {faulty_high[rule]:>17.2f}")
    print("(ratios to the fleet median; the lowest healthy and highest slow GPU show each "
          "rule's margin on either side of the fraction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
