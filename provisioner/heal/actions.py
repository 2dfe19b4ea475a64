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
import re
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
# Each GPU's persistence mode, named every way ``-i`` takes it (nvidia-smi(1)).
UNRESTORED = "gpuctl: persistence mode not restored on GPU "
NOT_OFF = "gpuctl: persistence mode could not be turned off"
PERSISTENCE = ("nvidia-smi --query-gpu=index,pci.bus_id,uuid,persistence_mode "
               "--format=csv,noheader")
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


_PCI = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?")


def _pci(bus_id: str) -> tuple[int | None, int, int] | None:
    """(domain or None, bus, device) of ``00000008:01:00.0``, ``0008:01:00`` (the kernel
    log's form) or ``01:00.0``; None when it is no PCI address. The domain matters:
    on GB200/GH200 each GPU has its own, all at bus 01."""
    found = _PCI.fullmatch(bus_id.strip())
    if found is None:
        return None
    domain, bus, dev = found.groups()
    return (int(domain, 16) if domain else None), int(bus, 16), int(dev, 16)


def _same_gpu(want: str, row: list[str]) -> bool:
    """Whether ``want`` (an index, a UUID or a bus id) names the GPU of ``row`` (index,
    bus id, UUID, persistence mode)."""
    if want.strip().upper() in (row[0].upper(), row[2].upper()):
        return True
    mine, theirs = _pci(want), _pci(row[1])
    if mine is None or theirs is None:
        return False
    return mine[1:] == theirs[1:] and mine[0] in (None, theirs[0])


def _targets(access: NodeAccess, gpus: tuple[str, ...]
             ) -> tuple[list[tuple[str, bool]], str | None]:
    """The GPUs to reset (``gpus``; every GPU when empty), each by the bus id nvidia-smi
    prints for it, with whether persistence mode is on; or why not. A GPU nvidia-smi
    cannot read (one that needs the reset may be one) keeps the id it was given, with
    persistence mode taken as off: the reset is still tried, as NVSentinel's script
    does (NVIDIA/NVSentinel#1692 guards this query: "a GPU that has dropped off the PCIe
    bus" fails it)."""
    try:
        _, out, _ = access.run(PERSISTENCE, timeout=30)
    except GpuctlError:
        out = ""
    rows = [r for r in ([c.strip() for c in line.split(",")] for line in out.splitlines())
            if len(r) == 4]
    found: list[tuple[str, bool]] = []
    for want in gpus:
        match = [r for r in rows if _same_gpu(want, r)]
        if len(match) > 1:
            return [], f"GPU {want} names {len(match)} of nvidia-smi's GPUs; no reset"
        target = (match[0][1], match[0][3] == "Enabled") if match else (want.strip(), False)
        if target not in found:
            found.append(target)
    if not gpus:
        found = [(r[1], r[3] == "Enabled") for r in rows]
    return found, None


def gpu_reset(access: NodeAccess, gpus: tuple[str, ...]) -> ActionResult:
    """``nvidia-smi -r`` on each GPU (all when ``gpus`` is empty); refused when a
    process uses one (nvidia-smi(1): "There can't be any applications using these
    devices").

    nvidia-persistenced's hold on a GPU has refused its reset ("In use by another
    client", exit 255: NVIDIA/NVSentinel#1690, NVIDIA/gpu-operator#118), while newer
    nvidia-smi turns persistence mode off and on by itself when it can reach the daemon
    (NVIDIA/NVSentinel#1243). So the reset turns it off on the GPUs that have it and on
    again after, whatever the reset did (a trap, so a dropped session restores it too),
    as NVSentinel does (#1692); harmless where nvidia-smi would have done it."""
    busy, _ = gpu_processes(access, False)
    if busy is None:
        return ActionResult(False, "could not tell whether processes use the GPUs; no reset")
    if busy:
        return ActionResult(False, f"processes on GPU {', '.join(sorted(busy))}; no reset",
                            {"gpus_in_use": sorted(busy)})
    targets, why = _targets(access, gpus)
    if why is not None:
        return ActionResult(False, why)
    persistent = [bus for bus, on in targets if on]
    # Each GPU by the bus id nvidia-smi printed for it (a finding may carry the kernel
    # log's shorter form); every GPU at once when none was named.
    reset = " && ".join(f"nvidia-smi -r -i {shlex.quote(bus)}" for bus, _ in targets) \
        if gpus else "nvidia-smi -r"
    restore = "; ".join(f"nvidia-smi -pm 1 -i {shlex.quote(b)} >/dev/null || echo "
                        f"{shlex.quote(UNRESTORED + b)}" for b in persistent)
    off = " && ".join(f"nvidia-smi -pm 0 -i {shlex.quote(b)} >/dev/null"
                      for b in persistent)
    # The reset's own exit code (or the first -pm 0 that failed: then no reset ran);
    # the restore runs on every way out.
    # A signal's trap exits, so the EXIT trap restores and nothing runs after it (a trap
    # that only restored would let the script go on to the reset).
    signals = "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; " \
        "trap 'exit 143' TERM; "
    command = (f"trap {shlex.quote(restore)} EXIT; {signals}{off} || "
               f"{{ echo {shlex.quote(NOT_OFF)}; exit 1; }}; {reset}") if persistent else reset
    evidence = {"command": command, "persistence_mode_off_for": persistent}
    try:
        code, out, err = access.run(command, timeout=60.0 + 30.0 * max(1, len(targets)))
    except GpuctlError as exc:
        return ActionResult(False, f"reset: {exc}", evidence)
    words = " ".join((out + " " + err).split())[-300:]
    what = "persistence mode could not be turned off: no reset" if NOT_OFF in out \
        else f"{reset}: exit {code}"
    return ActionResult(code == 0 and UNRESTORED not in out,
                        what + (f": {words}" if words else ""), {**evidence, "exit": code})


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
