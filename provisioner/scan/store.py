"""Write one node's scan into the database: snapshot, GPUs, NICs, disks, events."""

from __future__ import annotations

import json
from dataclasses import asdict

from sqlmodel import Session

from provisioner.db.models import Disk, Gpu, HardwareSnapshot, Nic, Node, utcnow
from provisioner.inventory.lifecycle import ALLOWED, State, record_event, transition
from provisioner.probe.facts import HardwareFacts
from provisioner.scan.findings import Finding


def store_snapshot(session: Session, node: Node, facts: HardwareFacts, run_id: int,
                   findings: list[Finding]) -> int:
    """Insert the snapshot (with the findings it showed) and its normalized rows;
    returns the snapshot id."""
    assert node.id is not None
    snap = HardwareSnapshot(
        node_id=node.id, run_id=run_id, hostname=facts.hostname, os_name=facts.os_name,
        kernel=facts.kernel, system_vendor=facts.dmi.get("sys_vendor"),
        system_product=facts.dmi.get("product_name"),
        system_serial=facts.dmi.get("product_serial"), cpu_model=facts.cpu_model,
        cpu_sockets=facts.cpu_sockets, cpu_cores=facts.cpu_cores,
        memory_bytes=facts.memory_bytes, gpu_count=len(facts.gpus),
        pci_gpu_count=len(facts.pci_gpus), driver_version=facts.driver_version,
        cuda_version=facts.cuda_version, nouveau_loaded=facts.nouveau_loaded,
        secure_boot=facts.secure_boot, facts_json=json.dumps(
            {**facts.to_dict(), "findings": [asdict(f) for f in findings]}),
    )
    session.add(snap)
    session.flush()
    assert snap.id is not None
    for gpu in facts.gpus:
        # Facts the burn-in reads but the Gpu table does not keep.
        fields = {k: v for k, v in gpu.__dict__.items()
                  if k not in ("mig_devices", "ecc_mode_pending", "persistence_mode",
                                "minor_number")}
        session.add(Gpu(snapshot_id=snap.id, node_id=node.id,
                        driver_version=facts.driver_version, **fields))
    for nic in facts.nics:
        session.add(Nic(snapshot_id=snap.id, **nic))
    for port in facts.ib_ports:
        session.add(Nic(snapshot_id=snap.id, name=f"{port['device']}/{port['port']}",
                        kind="infiniband", state=port["state"], ib_device=port["device"],
                        ib_port=port["port"], ib_rate_gbps=port["rate_gbps"],
                        ib_link_layer=port["link_layer"]))
    for disk in facts.disks:
        session.add(Disk(snapshot_id=snap.id, **disk))
    node.last_snapshot_id = snap.id
    node.last_scan_at = utcnow()
    session.add(node)
    return snap.id


def apply_findings(session: Session, node: Node, findings: list[Finding], *, actor: str,
                   run_id: int) -> None:
    """Record each finding as an event, move a new node to discovered, and quarantine a
    node with a critical finding."""
    for f in findings:
        record_event(session, node, "drift" if f.drift else "fault", f"{f.kind}: {f.message}",
                     actor=actor, run_id=run_id, severity=f.severity)
    if node.state == State.REGISTERED:
        transition(session, node, State.DISCOVERED, actor=actor, reason="first scan",
                   run_id=run_id)
    critical = [f for f in findings if f.severity == "critical"]
    if critical and State.QUARANTINED in ALLOWED[State(node.state)]:
        reason = "; ".join(f"{f.kind}: {f.message}" for f in critical[:3])
        transition(session, node, State.QUARANTINED, actor=actor, reason=reason[:500],
                   run_id=run_id)
