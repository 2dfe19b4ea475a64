"""The rungs as actions on a node, and what the planner needs to know first.

Each reaches the node the one way gpuctl has for it: SSH through ``run_on_node``, the BMC
through ``provisioner.bmc.set_power``. Each returns an ``ActionResult`` (ok or not, with
words and evidence) and raises nothing a node or a BMC can cause: a BMC that does not
answer is a failed rung with its message, not a crash.

A reboot and a power cycle are confirmed by the node coming back with another boot id
(``/proc/sys/kernel/random/boot_id``, or the node's ``reboot_boot_time_command`` host
variable, as Ansible's reboot module reads it) within the deadline.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import GpuctlError
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import get_node
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
# Bus ids of GPUs with compute processes (nvidia-smi(1) --query-compute-apps); then
# whether Fabric Manager runs (systemd's unit of NVIDIA's package).
GPU_APPS = "nvidia-smi --query-compute-apps=gpu_bus_id --format=csv,noheader"
FABRIC_MANAGER = "systemctl is-active nvidia-fabricmanager"
# As Ansible's reboot module does it on Linux: shutdown(8), which systemd and sysvinit
# both have (the lab's nodes have a stand-in that asks their PID 1 to reboot).
REBOOT = "shutdown -r now 'gpuctl remediation'"


@dataclass
class ActionResult:
    ok: bool
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeAccess:
    """How to reach a node over SSH, and its boot id command."""

    target: Target
    boot_id_command: str
    known: KnownHosts

    @classmethod
    def of(cls, gc: Gpuctl, name: str) -> NodeAccess:
        with gc.session() as session:
            node = get_node(session, name)
            host_vars = json.loads(node.vars_json or "{}")
            target = Target.of(node)
        command = str(host_vars.get("reboot_boot_time_command") or BOOT_ID)
        return cls(target, command, KnownHosts(gc.paths.known_hosts))

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run ``command``; (exit code, stdout, stderr). Raises the SSH errors."""
        res = run_on_node(self.target, command, known_hosts=self.known,
                          connect_timeout=5.0, command_timeout=timeout)
        return (res.exit_code, res.stdout.decode("utf-8", "replace"),
                res.stderr.decode("utf-8", "replace"))


def gpu_processes(access: NodeAccess, nvswitch: bool) -> tuple[frozenset[str] | None,
                                                                bool | None]:
    """(bus ids of GPUs with processes, or None when that could not be read;
    whether Fabric Manager runs, None when not asked or unknown)."""
    fm: bool | None = None
    try:
        code, out, _ = access.run(GPU_APPS, timeout=30)
        busy = frozenset(ln.strip() for ln in out.splitlines() if ln.strip()) \
            if code == 0 else None
        if nvswitch:
            fm_code, fm_out, _ = access.run(FABRIC_MANAGER, timeout=15)
            fm = fm_code == 0 and fm_out.strip() == "active"
    except GpuctlError:
        return None, None
    return busy, fm


def _boot_id(access: NodeAccess) -> str | None:
    try:
        code, out, _ = access.run(access.boot_id_command, timeout=15)
    except GpuctlError:
        return None
    return out.strip() or None if code == 0 else None


def wait_back(access: NodeAccess, old_boot: str | None, timeout: float) -> ActionResult:
    """Wait until the node answers over SSH with a boot id other than ``old_boot``."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        boot = _boot_id(access)
        if boot is not None and boot != old_boot:
            return ActionResult(True, f"back after {time.monotonic() - start:.0f} s",
                                {"boot_id_before": old_boot, "boot_id_after": boot})
        time.sleep(1.0)
    return ActionResult(False, f"not back over SSH with a new boot within {timeout:g} s",
                        {"boot_id_before": old_boot})


def gpu_reset(access: NodeAccess, gpus: tuple[str, ...]) -> ActionResult:
    """``nvidia-smi -r`` on each GPU (all when ``gpus`` is empty); refused when a
    process uses one (nvidia-smi(1): "There can't be any applications using these
    devices")."""
    busy, _ = gpu_processes(access, False)
    if busy is None:
        return ActionResult(False, "could not tell whether processes use the GPUs; no reset")
    if busy:
        return ActionResult(False, f"processes on GPU {', '.join(sorted(busy))}; no reset",
                            {"gpus_in_use": sorted(busy)})
    command = " && ".join(f"nvidia-smi -r -i {shlex.quote(g)}" for g in gpus) \
        if gpus else "nvidia-smi -r"
    try:
        code, out, err = access.run(command, timeout=120)
    except GpuctlError as exc:
        return ActionResult(False, f"reset: {exc}")
    words = " ".join((out + " " + err).split())[-300:]
    return ActionResult(code == 0, f"{command}: exit {code}" + (f": {words}" if words
                                                                  else ""),
                        {"command": command, "exit": code})


def reboot(access: NodeAccess, timeout: float) -> ActionResult:
    """Reboot over SSH and wait for the node to come back with a new boot id."""
    old = _boot_id(access)
    if old is None:
        return ActionResult(False, "the node does not answer over SSH: no reboot sent")
    # The connection may drop as the node goes down: the boot id tells.
    with contextlib.suppress(GpuctlError):
        access.run(f"sh -c {shlex.quote(REBOOT)} </dev/null >/dev/null 2>&1 &", timeout=30)
    back = wait_back(access, old, timeout)
    return ActionResult(back.ok, f"reboot: {back.message}", back.evidence)


def power_cycle(gc: Gpuctl, access: NodeAccess, timeout: float) -> ActionResult:
    """Power-cycle through the node's BMC, then wait for the node over SSH."""
    from provisioner.bmc import set_power  # noqa: PLC0415 (loads sushy)

    old = _boot_id(access)
    try:
        power = set_power(gc, access.target.name, "cycle", wait=min(timeout, 120.0))
    except GpuctlError as exc:  # BmcError: recorded in the node's history already
        return ActionResult(False, f"power cycle: {exc}", {"bmc_error": str(exc)})
    back = wait_back(access, old, timeout)
    return ActionResult(back.ok, f"power cycle ({power.before} -> {power.after}, "
                        f"{', '.join(power.resets) or 'nothing sent'}): {back.message}",
                        {**back.evidence, "power": power.to_dict()})
