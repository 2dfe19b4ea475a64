"""Out-of-band control of a registered node through its BMC: power state, power
actions (recorded in the node's history), and what the BMC says about the machine."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sushy.resources import constants as res_cons

from provisioner.bmc.redfish import BmcTarget, log_services, open_system
from provisioner.db.models import HardwareSnapshot
from provisioner.errors import BmcError, InputError
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import SERVING, get_node, record_event

if TYPE_CHECKING:
    from sushy.resources.system.system import System

POWER_ACTIONS = ("on", "off", "cycle")
# Redfish PowerState as gpuctl says it.
_STATES = {"On": "on", "Off": "off", "PoweringOn": "powering on",
           "PoweringOff": "powering off", "Paused": "paused"}
POLL_SECONDS = 0.5


@dataclass
class PowerResult:
    """What ``set_power`` did: the states before and after, and the Redfish
    ``ResetType`` values it sent, in order (none when the node was already there)."""

    node: str
    action: str
    before: str
    after: str
    resets: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BmcLogEntry:
    id: str
    created: str | None
    severity: str | None
    message: str


@dataclass
class BmcInfo:
    """``gpuctl bmc info``: the machine as its BMC describes it."""

    node: str
    url: str
    system: str
    power_state: str
    serial: str | None
    os_serial: str | None  # the system serial the node's OS reported at its last scan
    manufacturer: str | None
    model: str | None
    bios_version: str | None
    bmc_firmware: str | None
    health: str | None
    health_rollup: str | None
    log_service: str | None  # the log read; None: the BMC has no log service
    log_entries: list[BmcLogEntry] = field(default_factory=list)

    @property
    def serial_matches(self) -> bool | None:
        """False when the BMC and the OS name different machines; None: unknown."""
        if not self.serial or not self.os_serial:
            return None
        return self.serial.strip() == self.os_serial.strip()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "serial_matches": self.serial_matches}


def _target(gc: Gpuctl, name: str) -> tuple[BmcTarget, str | None]:
    """The node's BMC and the system serial its OS reported at its last scan."""
    with gc.session() as session:
        node = get_node(session, name)
        snap = session.get(HardwareSnapshot, node.last_snapshot_id) \
            if node.last_snapshot_id else None
        return BmcTarget.of(node), snap.system_serial if snap else None


def _state(system: System) -> str:
    value = system.power_state
    raw = value.value if isinstance(value, res_cons.PowerState) else value
    return _STATES.get(str(raw), str(raw).lower()) if raw else "unknown"


def read_power_state(target: BmcTarget) -> str:
    """The power state the BMC reports: on, off, powering on, powering off, paused or
    unknown.

    Raises:
        BmcError: the BMC cannot be asked.
    """
    with open_system(target) as system:
        return _state(system)


def read_system_serial(target: BmcTarget) -> str | None:
    """The system serial number the BMC reports (None: it reports none).

    Raises:
        BmcError: the BMC cannot be asked.
    """
    with open_system(target) as system:
        return str(system.serial_number).strip() if system.serial_number else None


def power_state(gc: Gpuctl, name: str) -> str:
    """The node's power state as its BMC reports it (see ``read_power_state``).

    Raises:
        NotFoundError: no such node.
        BmcError: the node has no BMC, or it cannot be asked.
    """
    return read_power_state(_target(gc, name)[0])


def _check_mapping(target: BmcTarget, system: System, os_serial: str | None) -> None:
    serial = str(system.serial_number or "").strip()
    if serial and os_serial and serial != os_serial.strip():
        raise BmcError(f"{target.node}: BMC {target.base_url} reports system serial "
                       f"{serial}, but the node's OS reported {os_serial.strip()} at its "
                       "last scan: the BMC belongs to another machine; fix the node's "
                       "--bmc (or force the action)")


def _wait_for(system: System, wanted: str, deadline: float, target: BmcTarget) -> str:
    state = _state(system)
    while state != wanted:
        if time.monotonic() > deadline:
            raise BmcError(f"{target.node}: BMC {target.base_url} still reports power "
                           f"{state}, not {wanted}, after the time allowed")
        time.sleep(POLL_SECONDS)
        system.refresh()
        state = _state(system)
    return state


def _reset(system: System, value: res_cons.ResetType, sent: list[str]) -> None:
    system.reset_system(value)
    sent.append(value.value)


def apply_power(target: BmcTarget, action: str, *, wait: float = 120.0,
                os_serial: str | None = None) -> PowerResult:
    """Power the node ``on``, ``off`` (immediately: ForceOff) or ``cycle`` it through
    its BMC, and wait until the BMC reports the state that follows. A cycle uses the
    BMC's PowerCycle when it offers one, else ForceOff then On; a node that is off is
    just powered on. With ``os_serial`` (what the node's OS reported) a BMC that
    reports another system serial is refused before anything is sent.

    Raises:
        InputError: an unknown action.
        BmcError: the BMC cannot be asked, refuses, reports another machine, or does
            not reach the state within ``wait`` seconds.
    """
    if action not in POWER_ACTIONS:
        raise InputError(f"power action {action!r} must be one of {', '.join(POWER_ACTIONS)}")
    start = time.monotonic()
    deadline = start + wait
    sent: list[str] = []
    types = res_cons.ResetType
    try:
        with open_system(target) as system:
            _check_mapping(target, system, os_serial)
            before = _state(system)
            wanted = "off" if action == "off" else "on"
            if action == "cycle" and before == "off":
                _reset(system, types.ON, sent)
            elif action == "cycle":
                if types.POWER_CYCLE in system.get_allowed_reset_system_values():
                    _reset(system, types.POWER_CYCLE, sent)
                else:
                    _reset(system, types.FORCE_OFF, sent)
                    system.refresh()
                    _wait_for(system, "off", deadline, target)
                    _reset(system, types.ON, sent)
            elif before != wanted:
                _reset(system, types.ON if wanted == "on" else types.FORCE_OFF, sent)
            if sent:
                system.refresh()
            after = _wait_for(system, wanted, deadline, target)
    except BmcError as exc:
        if sent:  # say what already reached the node (a cycle may have left it off)
            raise BmcError(f"{exc} (after sending {', '.join(sent)})") from None
        raise
    return PowerResult(target.node, action, before, after, sent,
                       round(time.monotonic() - start, 3))


def set_power(gc: Gpuctl, name: str, action: str, *, wait: float = 120.0,
              force: bool = False, serving_ok: bool = False) -> PowerResult:
    """Power node ``name`` on, off or cycle it through its BMC (``apply_power``) and
    record what was done in the node's history (who, what, the Redfish resets sent;
    never a credential). Unless ``force``, a BMC whose system serial differs from the
    one the node's OS reported at its last scan is refused: it would act on another
    machine. Unless ``serving_ok``, ``off`` and ``cycle`` are refused for a node that
    serves (certified or in service): its jobs would die with it, and it would come back
    in service unverified (``gpuctl remediate NODE --action power-cycle`` drains it,
    cycles it and re-certifies it).

    Raises:
        InputError: an unknown action.
        NotFoundError: no such node.
        BmcError: no BMC registered, or ``apply_power`` failed (recorded as a warning
            event before it is raised).
    """
    if action not in POWER_ACTIONS:
        raise InputError(f"power action {action!r} must be one of {', '.join(POWER_ACTIONS)}")
    target, os_serial = _target(gc, name)
    if action in ("off", "cycle") and not serving_ok:
        with gc.session() as session:
            state = get_node(session, name).state
        if state in SERVING:
            raise BmcError(f"{name} is {state}: power {action} would kill its jobs and "
                           "bring it back unverified; use `gpuctl remediate "
                           f"{name} --action power-cycle` (drains and re-certifies), or "
                           "--serving to do it anyway")
    try:
        result = apply_power(target, action, wait=wait,
                             os_serial=None if force else os_serial)
    except BmcError as exc:
        _record(gc, name, f"power {action} through the BMC failed: {exc}", "warning")
        raise
    if result.resets:
        _record(gc, name, f"power {action} through the BMC {target.base_url} "
                f"(Redfish {', '.join(result.resets)}): {result.before} -> {result.after}",
                "info")
    return result


def _record(gc: Gpuctl, name: str, reason: str, severity: str) -> None:
    with gc.session() as session:
        node = get_node(session, name)
        record_event(session, node, "bmc", reason[:500], actor=gc.actor, severity=severity)


def _health(status: Any, key: str) -> str | None:
    value = getattr(status, key, None) if status is not None else None
    return str(value.value if isinstance(value, res_cons.Health) else value) \
        if value else None


def read_info(target: BmcTarget, *, entries: int = 10,
              os_serial: str | None = None) -> BmcInfo:
    """What the BMC says about the machine: identity, firmware versions, health and
    the ``entries`` newest entries of its first log service (the system's, else its
    manager's). A BMC without a log service is not an error: ``log_service`` is None.

    Raises:
        BmcError: the BMC cannot be asked.
    """
    with open_system(target) as system:
        raw = system.json or {}
        status = raw.get("Status") or {}
        managers = system.managers if (raw.get("Links") or {}).get("ManagedBy") else []
        firmware = str(managers[0].firmware_version) \
            if managers and managers[0].firmware_version else None
        services = log_services(system) or (log_services(managers[0]) if managers else [])
        service = services[0] if services else None
        log = [BmcLogEntry(str(e.identity), e.created, e.severity, str(e.message or ""))
               for e in service.newest_entries(entries)] if service else []
        return BmcInfo(
            node=target.node, url=target.url, system=str(system.identity),
            power_state=_state(system),
            serial=str(system.serial_number).strip() if system.serial_number else None,
            os_serial=os_serial, manufacturer=system.manufacturer, model=system.model,
            bios_version=system.bios_version, bmc_firmware=firmware,
            health=_health(system.status, "health") or status.get("Health"),
            # Some BMCs (sushy-tools among them) spell it HealthRollUp.
            health_rollup=_health(system.status, "health_rollup")
            or status.get("HealthRollup") or status.get("HealthRollUp"),
            log_service=str(service.name or service.identity) if service else None,
            log_entries=log)


def bmc_info(gc: Gpuctl, name: str, *, entries: int = 10) -> BmcInfo:
    """``read_info`` for a registered node, with the serial its OS reported at its
    last scan beside the BMC's.

    Raises:
        NotFoundError: no such node.
        BmcError: the node has no BMC, or it cannot be asked.
    """
    target, os_serial = _target(gc, name)
    return read_info(target, entries=entries, os_serial=os_serial)
