"""What the loop knows of each node before it decides: read from the database and the
listeners, never written (``--plan`` runs only this and the planner).

The control host: gpuctl never acts on the machine it runs on. A node is this machine
when its registered address is a loopback name or address that is not one of the
lab's (``127.0.0.1``, ``::1``, ``localhost``), when its address resolves to the address
this machine's hostname resolves to, or when the hostname its last scan saw is this
machine's. (Lab nodes live on other 127.0.N.M addresses in their own UTS namespaces:
they are not this machine, as a node on this host's loopback would be.)
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from provisioner.db.models import Event, HardwareSnapshot, Node, Remediation, Run
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import SERVING, State
from provisioner.remediate.plan import Attempt
from provisioner.remediate.record import attempts_of, open_remediation_of
from provisioner.scan.findings import Finding

_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain"})


@dataclass
class NodeInfo:
    """One node as the loop sees it."""

    name: str
    node_id: int
    state: str
    sku: str | None
    address: str
    has_bmc: bool
    nvswitch: bool
    findings: list[Finding]
    history: list[Attempt]
    control_host: bool
    # The state it served in before it was quarantined (in-service or certified), or "".
    served_as: str = ""
    record_id: int | None = None
    record_state: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def _addresses(host: str) -> set[str]:
    try:
        return {str(a[4][0]) for a in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


def is_control_host(address: str, scanned_hostname: str | None) -> bool:
    """Whether the node at ``address`` (last seen as ``scanned_hostname``) is this
    machine (see the module docstring)."""
    me = socket.gethostname()
    if address.lower() in _LOCAL_NAMES:
        return True
    if scanned_hostname and scanned_hostname.split(".")[0] == me.split(".")[0]:
        return True
    mine = _addresses(me) - {"127.0.0.1", "::1"}
    return bool(mine and mine & _addresses(address))


def findings_of(facts: dict[str, Any]) -> list[Finding]:
    """The findings a snapshot stored (``store_snapshot``), as ``Finding`` objects."""
    names = {f.name for f in fields(Finding)}
    out = []
    for item in facts.get("findings") or []:
        if isinstance(item, dict) and {"kind", "severity", "message"} <= set(item):
            out.append(Finding(**{k: v for k, v in item.items() if k in names}))
    return out


def _served_as(session: Session, node_id: int) -> str:
    """The serving state the node left for quarantine, if its last move there was one."""
    row = session.exec(select(Event.from_state).where(
        Event.node_id == node_id, Event.kind == "state",
        Event.to_state == State.QUARANTINED.value).order_by(col(Event.id).desc())
        .limit(1)).first()
    return row if row in SERVING else ""


def node_info(gc: Gpuctl, session: Session, node: Node, since: datetime | None = None
              ) -> NodeInfo:
    """What the loop needs of ``node`` (see ``NodeInfo``)."""
    assert node.id is not None
    snap = session.get(HardwareSnapshot, node.last_snapshot_id) \
        if node.last_snapshot_id else None
    facts = json.loads(snap.facts_json) if snap and snap.facts_json else {}
    sku = gc.sku(node.sku)
    record = open_remediation_of(session, node.id)
    return NodeInfo(
        name=node.name, node_id=node.id, state=node.state, sku=node.sku,
        address=node.address, has_bmc=bool(node.bmc_url),
        nvswitch=bool(sku is not None and sku.nvswitch), findings=findings_of(facts),
        history=attempts_of(session, node.id, since),
        control_host=is_control_host(node.address, snap.hostname if snap else None),
        served_as=_served_as(session, node.id),
        record_id=record.id if record else None, record_state=record.state if record else "",
        facts={k: facts.get(k) for k in ("hostname", "driver_version", "xids", "gpus")
               if k in facts})


# Runs whose quarantine is gpuctl's own finding: the loop may act on those. A person's
# `gpuctl quarantine` (no run) is theirs to release: an admin hold, as a foreign drain.
CHECK_RUNS = ("scan", "monitor", "burnin", "remediate")


def quarantined_by_a_check(session: Session, node_id: int) -> bool:
    """Whether the node's latest move into quarantine came from one of gpuctl's checks
    (a scan, monitor, burn-in or remediation run), not from a person."""
    event = session.exec(select(Event).where(
        Event.node_id == node_id, Event.kind == "state",
        Event.to_state == State.QUARANTINED.value).order_by(
        col(Event.at).desc(), col(Event.id).desc())).first()
    if event is None or event.run_id is None:
        return False
    run = session.get(Run, event.run_id)
    return run is not None and run.kind in CHECK_RUNS


def candidates(gc: Gpuctl, names: list[str] | None) -> list[NodeInfo]:
    """The named nodes, or every node one of gpuctl's checks quarantined and every node
    with an open remediation, in name order."""
    from provisioner.inventory.lifecycle import get_node  # noqa: PLC0415

    with gc.session() as session:
        if names:
            nodes = [get_node(session, n) for n in dict.fromkeys(names)]
        else:
            open_ids = set(session.exec(select(Remediation.node_id).where(
                col(Remediation.closed_at).is_(None))).all())
            nodes = [n for n in session.exec(select(Node).where(
                (col(Node.state) == State.QUARANTINED.value) | col(Node.id).in_(open_ids))
                .order_by(col(Node.name)))
                if n.id in open_ids or quarantined_by_a_check(session, n.id or 0)]
        return [node_info(gc, session, n) for n in nodes]


def serving_per_sku(gc: Gpuctl) -> dict[str | None, int]:
    """Each SKU's serving nodes now (certified or in service): the breaker's base."""
    from sqlmodel import func  # noqa: PLC0415

    with gc.session() as session:
        rows = session.exec(select(Node.sku, func.count(col(Node.id)))
                            .where(col(Node.state).in_(SERVING))
                            .group_by(col(Node.sku))).all()
    return {sku: int(n) for sku, n in rows}
