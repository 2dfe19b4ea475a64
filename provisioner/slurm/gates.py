"""The gates a node passes in Slurm before it takes jobs: registered, responding, with
the GRES it was certified with, and Slurm's own view of its hardware (``slurmd -C``)
matching gpuctl's snapshot."""

from __future__ import annotations

import re
import time

from provisioner.slurm.client import SlurmNode, node_details, slurm_nodes


def wait_registered(expected: dict[str, str], timeout: float, poll: float = 0.5
                    ) -> tuple[dict[str, SlurmNode], dict[str, str]]:
    """Wait until each node (name -> the gres it must show, e.g. ``gpu:h100:8``) has
    registered with slurmctld (``scontrol show node``: a base state other than
    UNKNOWN, DOWN or FUTURE, not NOT_RESPONDING) with that gres. A node may be drained
    by gpuctl (it joins drained); drained or down for another reason (Slurm's own,
    such as a GRES count below the configured one, or an admin's) is a problem.
    Returns the last view and, for each node that did not get there, why."""
    deadline = time.monotonic() + timeout
    while True:
        details = node_details(list(expected))
        view = slurm_nodes(list(expected))
        problems = {}
        for name, gres in expected.items():
            node, info = view.get(name), details.get(name)
            if node is None or info is None:
                problems[name] = "not in Slurm"
                continue
            base, _, flags = info.get("State", "UNKNOWN").partition("+")
            why = f"{info.get('State', '?')}" + (f": {node.reason}" if node.reason else "")
            if base in ("UNKNOWN", "DOWN", "FUTURE", "FAIL") or "NOT_RESPONDING" in flags:
                problems[name] = f"not registered ({why})"
            elif node.drained and not node.by_gpuctl:
                problems[name] = f"drained by {node.reason_user or 'Slurm'} ({why})"
            elif not _gres_has(info.get("Gres", ""), gres):
                problems[name] = (f"Slurm shows gres {info.get('Gres') or 'none'}, "
                                  f"certified {gres}")
        if not problems or time.monotonic() > deadline:
            return view, problems
        time.sleep(poll)


def _gres_has(shown: str, wanted: str) -> bool:
    """``gpu:h100:8`` within sinfo's ``gpu:h100:8(S:0-1),...``."""
    items = [re.sub(r"\(.*?\)", "", g) for g in shown.split(",")]
    return wanted in items


def compare_hardware(slurmd_c: str, *, cpus: int | None, memory_mib: int | None) -> list[str]:
    """Differences between ``slurmd -C`` (Slurm's view of the node's hardware) and the
    NodeName line gpuctl wrote from its snapshot."""
    seen = dict(re.findall(r"(\w{1,40})=(\S{1,40})", slurmd_c[:65536]))
    out = []
    for key in ("CPUs", "RealMemory"):
        # A value that is not a count (a hostile or broken node) is a difference too.
        if key in seen and not re.fullmatch(r"[0-9]{1,12}", seen[key]):
            out.append(f"slurmd -C reports {key}={seen[key][:20]!r}, not a number")
            seen.pop(key)
    if cpus and seen.get("CPUs") and int(seen["CPUs"]) != cpus:
        out.append(f"slurmd -C reports CPUs={seen['CPUs']}, gpuctl's snapshot {cpus}")
    if memory_mib and seen.get("RealMemory") and int(seen["RealMemory"]) < memory_mib:
        out.append(f"slurmd -C reports RealMemory={seen['RealMemory']} MiB, below the "
                   f"{memory_mib} MiB configured")
    if not seen and not out:
        out.append("slurmd -C printed nothing usable")
    return out
