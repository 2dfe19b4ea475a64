"""A lab node's power, as its BMC (``provisioner.lab.bmc_emulator``) switches it.

Power off ends the node's process tree at once (PID 1 killed: sshd and everything
else go, the namespaces' mounts with them), as pulling the power would. Power on boots
it again from its spec. What a cold boot cures is cured: the transient faults
(``faults.TRANSIENT_FAULTS``: a GPU fallen off the bus, the XID in the kernel log, a
hung sshd) are gone and the kernel log starts afresh; faults that model a part stay.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.lab.faults import TRANSIENT_FAULTS
from provisioner.lab.render import node_files

if TYPE_CHECKING:
    from provisioner.lab.nodes import Lab


def is_on(lab: Lab, name: str) -> bool:
    return lab.holder_pid(name) is not None


def power_off(lab: Lab, name: str) -> bool:
    """Cut the node's power; False if it was off already."""
    if not is_on(lab, name):
        return False
    lab._stop(name)  # noqa: SLF001  (the lab's own stop: SIGKILL to the node's PID 1)
    return True


def _upper(lab: Lab, name: str, path: str) -> Path:
    """Where ``path`` of the node lies in its overlay's upper layer (as Lab._render
    writes it: the directory through the lower root's symlinks)."""
    parent = os.path.realpath(os.path.dirname(path))
    return lab.node_dir(name) / "upper" / parent.lstrip("/") / os.path.basename(path)


def power_on(lab: Lab, name: str) -> list[str]:
    """Boot the node (cold): returns the transient faults the power cycle cleared;
    nothing if it was on already."""
    if is_on(lab, name):
        return []
    spec = lab.spec(name)
    cleared = [f for f in spec["faults"] if f in TRANSIENT_FAULTS]
    spec["faults"] = [f for f in spec["faults"] if f not in TRANSIENT_FAULTS]
    if "unreachable" in cleared:
        spec["sshd"] = True
    spec["kmsg"] = []  # a new boot's kernel log
    lab._save_spec(spec)  # noqa: SLF001
    # The files the node's state shows through (kernel log, GPU state, the compute-fault
    # hook of render.COMPUTE_FAULT), rewritten while it is off; the image's driver files
    # stay as provisioning left them.
    hook = f"{sysconfig.get_paths()['purelib']}/sitecustomize.py"
    files = node_files(spec)
    for path, (data, mode) in files.items():
        if path.startswith("/etc/gpuctl-lab/") or path == hook:
            target = _upper(lab, name, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, mode)
    if hook not in files:  # the hook went with the fault it simulated
        _upper(lab, name, hook).unlink(missing_ok=True)
    lab._start(name)  # noqa: SLF001
    return cleared
