"""One ``gpuctl monitor`` pass against a ``gpuctl scan --all`` of the same in-service lab
nodes, side by side in one run.

    sudo .venv/bin/python benchmarks/monitor.py [--nodes 64] [--parallel 32] [--rounds 3]

Alternates scan and monitor ``--rounds`` times and prints each wall time, the medians
and monitor / scan (target: <= 1.0). Both probe every node over SSH; a monitor pass
stores nothing for a healthy node, where a scan stores a full snapshot per node.
Everything runs against lab nodes on 127.0.201.0/24 in a throw-away GPUCTL_HOME.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

# The quiet CLI runner and the throw-away lab of the scan benchmark (this directory is
# on sys.path when a benchmark runs as a script).
from scan import driver_lab, gpuctl  # type: ignore[import-not-found]
from sqlmodel import select

from provisioner.db.models import Node
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, transition


def put_in_service(gc: Gpuctl) -> None:
    """Walk every node through the lifecycle to in-service by its legal transitions (a
    64-node burn-in on this machine's CPU would take the benchmark's whole budget; the
    monitor only reads the state and the last snapshot)."""
    path = [State.PROVISIONING, State.PROVISIONED, State.BURNING_IN, State.CERTIFIED,
            State.IN_SERVICE]
    with gc.session() as session:
        for node in session.exec(select(Node)):
            for state in path:
                transition(session, node, state, actor="benchmark", reason="benchmark set-up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with driver_lab(args.nodes, "127.0.201.10"):
        gpuctl(["scan", "--all", "--accept-new", "--json"])  # host keys, warm caches
        put_in_service(Gpuctl.from_env())
        scans, monitors = [], []
        par = ["--parallel", str(args.parallel), "--json"]
        print(f"timings ({args.nodes} in-service nodes, parallelism {args.parallel}):")
        for r in range(args.rounds):
            for label, argv, out in (("gpuctl scan --all", ["scan", "--all", *par], scans),
                                     ("gpuctl monitor", ["monitor", *par], monitors)):
                start = time.perf_counter()
                code = gpuctl(argv)
                out.append(time.perf_counter() - start)
                print(f"  round {r + 1} {label:<20} {out[-1]:6.2f} s (exit {code})",
                      flush=True)
                if code != 0:
                    return 1
        scan, monitor = statistics.median(scans), statistics.median(monitors)
        print(f"medians: scan {scan:.2f} s, monitor {monitor:.2f} s")
        print(f"ratio: monitor / scan = {monitor / scan:4.2f}  (target <= 1.0)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
