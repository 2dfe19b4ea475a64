"""Put lab nodes into the inventory (and take them out), as an admin would by hand."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from sqlmodel import col, select

from provisioner.db.models import Node
from provisioner.errors import LabError, NotFoundError
from provisioner.fleet.ops import remove_nodes
from provisioner.handle import Gpuctl
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.lab.bmc import LabBmcAccess, sushy_tools_missing
from provisioner.lab.nodes import (
    LabNode,
    missing_lab_tools,
    missing_line,
    require_lab_support,
)
from provisioner.lab.packages import REPO_IN_NODE
from provisioner.lab.ports import rdzv_port
from provisioner.ssh.hostkeys import KnownHosts

# What an admin would set for these machines: the system Python (this image's PATH has a
# pyenv shim), the local mirror of NVIDIA's repository (unsigned stand-ins), and how the
# node reports a new boot (the lab's nodes share the host kernel's boot_id).
LAB_HOST_VARS = {
    "ansible_python_interpreter": "/usr/bin/python3",
    "nvidia_repo_trusted": "true",
    # The mirror is a copy on the node's own disk: it reads or it does not, and retrying
    # a missing one (the repo-unreachable fault) would only wait.
    "nvidia_repo_apt_retries": "1",
    "reboot_boot_time_command": "cat /run/gpuctl-lab/boot_id",
    "reboot_timeout": "120",
    # Burn-in: the agent runs on the CPU (gloo) with a Python of this machine's that has
    # torch (burnin_python), which the nodes see through their overlay; real nodes get a
    # Python with torch installed by the burnin_env role. The node is judged by its
    # SKU's profile (inventory, memory, health, NVLink) with the throughput floors
    # replaced by those measured for the CPU lab.
    "gpuctl_burnin_floors": "cpu-lab",
    # Lab nodes share this machine's loopback: gloo's cross-node traffic goes over lo.
    "gpuctl_burnin_env": "GLOO_SOCKET_IFNAME=lo",
}


# The lab's mirrors, per node OS: NVIDIA's repository (and on RHEL EPEL's) as a local
# copy on the node, as an air-gapped site would have them.
LAB_OS_VARS = {
    "ubuntu22.04": {"nvidia_repo_mirror_url": f"file:{REPO_IN_NODE}"},
    "debian12": {"nvidia_repo_mirror_url": f"file:{REPO_IN_NODE}"},
    "rocky9": {"nvidia_repo_mirror_url": f"file://{REPO_IN_NODE}/nvidia",
               "nvidia_repo_epel_mirror_url": f"file://{REPO_IN_NODE}/epel"},
}


# What the burn-in agent imports (the burnin_env role checks the same on real nodes).
AGENT_MODULES = ("torch", "pynvml")
MODULES_CHECK = ("import importlib.util as u, sys; "
                 f"sys.exit(not all(u.find_spec(m) for m in {AGENT_MODULES!r}))")


def _python_problem(choice: str | None) -> tuple[str | None, str | None]:
    """(the lab's burn-in Python as an absolute path, or why there is none)."""
    if choice is None:
        if all(importlib.util.find_spec(m) for m in AGENT_MODULES):
            return sys.executable, None
        return None, ("gpuctl's Python lacks torch or nvidia-ml-py, which the nodes run the "
                      "burn-in agent with: pass --burnin-python PATH, or install gpuctl "
                      "with the burnin extra")
    found = shutil.which(choice)  # the nodes see this machine's files: one absolute path
    if found is None:
        return None, f"--burnin-python {choice}: no such program"
    found = str(Path(found).absolute())
    try:
        res = subprocess.run([found, "-c", MODULES_CHECK], capture_output=True, timeout=60,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"--burnin-python {choice}: cannot run it ({exc})"
    if res.returncode != 0:
        return None, (f"--burnin-python {choice} cannot import torch and pynvml (the nodes "
                      "run the burn-in agent with it)")
    return found, None


def check_prerequisites(os_name: str, with_slurm: bool, python: str | None,
                        register: bool, with_bmc: bool = False) -> str | None:
    """Everything ``lab up`` needs, checked before any node starts; returns the nodes'
    burn-in Python (None without registration).

    Raises:
        LabError: one line naming everything missing: tools (with their packages) and
            a Python with the burn-in agent's modules.
    """
    require_lab_support(os_name, tools=False)  # Linux and root come first
    missing = missing_lab_tools(os_name, with_slurm)
    problems = [missing_line(missing)] if missing else []
    found, why = _python_problem(python) if register else (None, None)
    if why:
        problems.append(why)
    no_bmc = sushy_tools_missing() if with_bmc else None
    if no_bmc:
        problems.append(no_bmc)
    if problems:
        raise LabError("the lab cannot start: " + "; ".join(problems))
    return found


def register_lab_nodes(gc: Gpuctl, nodes: list[LabNode], key_path: str,
                       python: str, bmc: LabBmcAccess | None = None) -> list[str]:
    """Register (or update) every lab node with the lab's client key; ``python`` is
    the nodes' burn-in interpreter (``burnin_python``); ``bmc``: how to reach the
    lab's BMCs (each node's URL is on its ``LabNode``)."""
    specs = [NodeSpec(name=n.name, address=n.address, port=n.port, user="root",
                      key_path=key_path, sku=n.sku,
                      labels={"lab": "true", "profile": n.profile, "os": n.os},
                      ansible_vars={**LAB_HOST_VARS, **LAB_OS_VARS[n.os],
                                    "gpuctl_burnin_python": python,
                                    # Its lab's own (the labs share one loopback).
                                    "gpuctl_rdzv_port": str(rdzv_port(n.address))},
                      **({"bmc_url": n.bmc, "bmc_user": bmc.user,
                          "bmc_password_from": bmc.password_from, "bmc_ca": bmc.ca}
                         if bmc is not None and n.bmc else {})) for n in nodes]
    return add_nodes(gc, specs, replace=True)


def unregister_lab_nodes(gc: Gpuctl, nodes: list[LabNode]) -> None:
    """Forget the nodes' host keys and remove them from the inventory if present."""
    known = KnownHosts(gc.paths.known_hosts)
    for node in nodes:
        known.forget(node.address, node.port)
        try:
            remove_nodes(gc, [node.name])
        except NotFoundError:
            continue


def set_slurmd_ports(gc: Gpuctl, ports: dict[str, int]) -> None:
    """Each lab node's slurmd port as its ``gpuctl_slurmd_port`` host variable: the lab's
    nodes share one loopback, so their NodeName lines carry ``Port=``."""
    with gc.session() as session:
        for node in session.exec(select(Node).where(col(Node.name).in_(list(ports)))):
            host_vars = json.loads(node.vars_json or "{}")
            host_vars["gpuctl_slurmd_port"] = str(ports[node.name])
            node.vars_json = json.dumps(host_vars)
            session.add(node)
