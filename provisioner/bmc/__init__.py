"""Out-of-band control through each node's BMC (Redfish, with OpenStack's sushy).

The core API (every function takes the ``Gpuctl`` handle and a node name):

- ``power_state(gc, node) -> str``: on, off, powering on, powering off, paused, unknown
- ``set_power(gc, node, action, *, wait=120, force=False) -> PowerResult``: on, off
  (ForceOff) or cycle; recorded in the node's history
- ``bmc_info(gc, node, *, entries=10) -> BmcInfo``: serial (and the OS's), BIOS and BMC
  firmware, health, the newest log entries

and, for callers that already hold a node's ``BmcTarget`` (``BmcTarget.of(node)``), the
same without the database: ``read_power_state``, ``apply_power``, ``read_info``,
``read_system_serial``. Every failure is a ``BmcError`` with a one-line message. The
BMC's password is read from its reference (``env:VARIABLE`` or a 0600 ``file:PATH``)
when needed and is never stored, logged or printed.
"""

from provisioner.bmc.power import (
    POWER_ACTIONS,
    BmcInfo,
    BmcLogEntry,
    PowerResult,
    apply_power,
    bmc_info,
    power_state,
    read_info,
    read_power_state,
    read_system_serial,
    set_power,
)
from provisioner.bmc.redfish import BmcTarget
from provisioner.errors import BmcError

__all__ = ["POWER_ACTIONS", "BmcError", "BmcInfo", "BmcLogEntry", "BmcTarget", "PowerResult",
           "apply_power", "bmc_info", "power_state", "read_info", "read_power_state",
           "read_system_serial", "set_power"]
