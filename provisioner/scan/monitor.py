"""``gpuctl monitor``: in-service health checks, cheap enough to run every few minutes.

One pass probes every serving node (certified or in service) with the scan's probe and
applies only its passive checks: new XIDs, ECC and row-remap errors, GPUs missing,
PCIe width, InfiniBand ports, NVLink links (``nvidia-smi nvlink --status``), the fabric
manager's registration of every GPU on NVSwitch systems, persistence mode. A critical
finding quarantines the node; the schedulers listening (``provisioner.events``) drain it
with the reason as the quarantine commits, and each pass ends with their ``reconcile``,
which retries what they could not do before. A healthy node costs one
SSH exec and no database write (its last snapshot stays the reference), which is what
makes the pass cheaper than ``scan``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import col, select

from provisioner.catalogue import Sku
from provisioner.db.models import Node
from provisioner.errors import NotFoundError
from provisioner.events import SyncReport, merge_reports
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import SERVING, get_node
from provisioner.probe.facts import HardwareFacts
from provisioner.runs import RunScope, recover_abandoned
from provisioner.scan.findings import Finding, health_findings
from provisioner.scan.run import judge_facts, probe_failed, probe_node
from provisioner.scan.store import apply_findings, store_snapshot
from provisioner.ssh.exec import Target
from provisioner.ssh.hostkeys import KnownHosts


@dataclass
class MonitorNode:
    name: str
    outcome: str  # ok | warning | quarantined | unreachable | refused | error
    message: str = ""


@dataclass
class MonitorSummary:
    run_id: int
    nodes: list[MonitorNode] = field(default_factory=list)
    # What each scheduler did in the pass, by name (``slurm``).
    schedulers: dict[str, SyncReport] = field(default_factory=dict)

    @property
    def quarantined(self) -> list[str]:
        return [n.name for n in self.nodes if n.outcome == "quarantined"]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "nodes": [asdict(n) for n in self.nodes],
                "quarantined": self.quarantined,
                "schedulers": {k: v.to_dict() for k, v in self.schedulers.items()}}


def service_findings(facts: HardwareFacts, sku: Sku | None) -> list[Finding]:
    """Checks that hold only for a node that serves: every NVLink link up (as many as
    the SKU has), the fabric manager's registration of every GPU, persistence mode."""
    out = []
    want = int(sku.fabric.get("nvlink_links") or 0) if sku is not None else 0
    for entry in facts.nvlink:
        if entry["inactive"]:
            links = ", ".join(str(x) for x in entry["inactive"][:8])
            out.append(Finding("nvlink", "critical", f"GPU {entry['gpu']}: NVLink "
                               f"link{'s' if len(entry['inactive']) > 1 else ''} {links} "
                               "inactive"))
        elif want and entry["links"] and entry["links"] < want:
            out.append(Finding("nvlink", "critical", f"GPU {entry['gpu']}: "
                               f"{entry['links']} NVLink links, SKU has {want}"))
    if facts.smi_status == "ok":
        waiting = [g for g in facts.gpus if g.fabric_state not in (None, "", "N/A",
                                                                   "Completed")]
        if waiting:
            out.append(Finding("fabric", "critical", f"NVSwitch fabric not up: state "
                               f"{waiting[0].fabric_state} on {len(waiting)} of "
                               f"{len(facts.gpus)} GPUs (fabric manager down?)"))
        off = [g for g in facts.gpus if g.persistence_mode == "Disabled"]
        if off:
            out.append(Finding("persistence", "warning", f"persistence mode is off on "
                               f"{len(off)} of {len(facts.gpus)} GPUs"))
    return out


def monitor_pass(gc: Gpuctl, *, parallel: int = 32, connect_timeout: float = 10.0,
                 command_timeout: float = 60.0) -> MonitorSummary:
    """One pass over every serving node (see the module docstring)."""
    recover_abandoned(gc)
    with gc.session() as session:
        nodes = list(session.exec(select(Node).where(col(Node.state).in_(SERVING))
                                  .order_by(col(Node.name))))
        targets = [Target.of(n) for n in nodes if not n.hostkey_mismatch]
        # A node whose host key changed is not probed (nothing proves it is the same
        # machine), and it is reported and kept drained on every pass, not only the first.
        flagged = [MonitorNode(n.name, "refused", "host key changed: not verified "
                               f"(gpuctl nodes forget-hostkey {n.name}, then scan, once "
                               "it is known to be the same machine)")
                   for n in nodes if n.hostkey_mismatch]
    known = KnownHosts(gc.paths.known_hosts)
    summary = MonitorSummary(0)
    with RunScope(gc, "monitor", {"nodes": len(targets)}) as run:
        summary.run_id = run.run_id
        with ThreadPoolExecutor(max_workers=min(parallel, max(1, len(targets)))) as pool:
            for probe in pool.map(lambda t: probe_node(t, known, False, connect_timeout,
                                                        command_timeout), targets):
                summary.nodes.append(_judge(gc, probe, run.run_id))
        summary.nodes = sorted(summary.nodes + flagged, key=lambda n: n.name)
        run.node_ok = {n.name: n.outcome in ("ok", "warning") for n in summary.nodes}
        # What the listeners did as nodes were quarantined, then their reconcile, which
        # keeps every node this pass could not verify drained.
        gc.unverified = {n.name: f"unverified: {n.outcome}: {n.message}"
                         for n in summary.nodes
                         if n.outcome in ("unreachable", "refused", "error")}
        summary.schedulers = merge_reports(gc.take_reports() + gc.reconcile())
        run.summary = {"quarantined": summary.quarantined,
                       "unreachable": [n.name for n in summary.nodes
                                       if n.outcome == "unreachable"],
                       "schedulers": {k: v.to_dict() for k, v in summary.schedulers.items()}}
    return summary


def _judge(gc: Gpuctl, probe: Any, run_id: int) -> MonitorNode:
    name = probe.target.name
    try:
        with gc.session() as session:
            node = get_node(session, name)
            if probe.error is not None:
                failed = probe_failed(session, node, probe, kind="monitor", actor=gc.actor,
                                      run_id=run_id)
                return MonitorNode(name, failed.outcome, failed.message)
            facts: HardwareFacts = probe.facts
            sku = gc.sku(node.sku)
            findings, fresh = judge_facts(session, node, facts, health_findings(facts, sku)
                                          + service_findings(facts, sku))
            notable = [f for f in fresh if f.severity != "info"]
            if not notable:
                return MonitorNode(name, "ok")
            # Stored, so the next pass does not report the same finding again.
            store_snapshot(session, node, facts, run_id, findings)
            apply_findings(session, node, notable, actor=gc.actor, run_id=run_id)
            critical = [f for f in notable if f.severity == "critical"]
            message = "; ".join(f"{f.kind}: {f.message}" for f in (critical or notable)[:2])
            return MonitorNode(name, "quarantined" if critical and node.state ==
                               "quarantined" else "warning", message)
    except NotFoundError:
        return MonitorNode(name, "error", "node was removed during the pass")
