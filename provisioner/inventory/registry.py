"""The node registry: add, import, list, show and label nodes (removal is a lifecycle
operation: ``provisioner.fleet.ops.remove_nodes``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from provisioner.db.models import (
    BurninResult,
    Certificate,
    Disk,
    Event,
    Gpu,
    HardwareSnapshot,
    Nic,
    Node,
    Remediation,
    RemediationEvent,
    Run,
    certificate_expired,
)
from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.inventory import validate
from provisioner.inventory.lifecycle import State, get_node, record_event


@dataclass
class NodeSpec:
    """A node as the user describes it, validated on construction."""

    name: str
    address: str | None = None
    port: int = 22
    user: str = "root"
    key_path: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    sku: str | None = None
    ansible_vars: dict[str, str] = field(default_factory=dict)
    # The node's BMC: Redfish URL, user, password reference (env:VAR or file:PATH) and
    # an optional CA bundle. All or nothing: a URL needs the user and the reference.
    bmc_url: str | None = None
    bmc_user: str | None = None
    bmc_password_from: str | None = None
    bmc_ca: str | None = None

    def __post_init__(self) -> None:
        validate.check_hostname(self.name, "node name")
        self.address = validate.check_address(self.address or self.name)
        self.port = validate.check_port(self.port)
        validate.check_user(self.user)
        if self.key_path is not None:
            validate.check_key_path(self.key_path)
        if self.sku is not None:
            validate.check_sku(self.sku)
        for key, value in self.labels.items():
            validate.parse_label(f"{key}={value}")
        for key, value in self.ansible_vars.items():
            validate.check_ansible_var(key, value)
        self._check_bmc()

    def _check_bmc(self) -> None:
        if self.bmc_url is None:
            extra = [n for n, v in (("user", self.bmc_user), ("password reference",
                     self.bmc_password_from), ("CA bundle", self.bmc_ca)) if v]
            if extra:
                raise InputError(f"node {self.name}: a BMC {extra[0]} without a BMC URL "
                                 "(--bmc)")
            return
        self.bmc_url = validate.check_bmc_url(self.bmc_url)
        if not self.bmc_user:
            raise InputError(f"node {self.name}: its BMC needs a user (--bmc-user)")
        validate.check_bmc_user(self.bmc_user)
        if not self.bmc_password_from:
            raise InputError(f"node {self.name}: its BMC needs a password reference "
                             "(--bmc-password-from env:VARIABLE or file:PATH)")
        self.bmc_password_from = validate.check_secret_ref(self.bmc_password_from)
        if self.bmc_ca is not None:
            self.bmc_ca = validate.check_ca_path(self.bmc_ca)


@dataclass
class NodeView:
    """One row of ``nodes list``."""

    name: str
    address: str
    port: int
    user: str
    state: str
    sku: str | None
    labels: dict[str, str]
    gpus: int | None
    last_scan: str | None
    hostkey_mismatch: bool
    bmc: str | None = None  # the BMC's Redfish URL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NodeDetail:
    """Everything ``nodes show`` prints about one node."""

    node: NodeView
    snapshot: dict[str, Any] | None
    gpus: list[dict[str, Any]]
    nics: list[dict[str, Any]]
    disks: list[dict[str, Any]]
    events: list[dict[str, Any]]
    burnin: dict[str, Any] | None = None  # the node's last burn-in run, summarised
    certificate: dict[str, Any] | None = None  # its newest certificate
    # Its open remediation (provisioner.heal): id, fault, state, rung, since, and why
    # (the last event's words, such as the circuit breaker's reason).
    remediation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def gpus_seen(gpu_count: int | None, pci_gpu_count: int | None) -> int | None:
    """The node's GPUs as ``nodes list`` and ``nodes show`` both report them: those the
    driver sees, or before a driver is installed, those on the PCI bus."""
    return gpu_count or pci_gpu_count


def _view(node: Node, gpus: int | None) -> NodeView:
    return NodeView(
        name=node.name, address=node.address, port=node.port, user=node.user,
        state=node.state, sku=node.sku, labels=json.loads(node.labels_json),
        gpus=gpus, last_scan=_iso(node.last_scan_at), hostkey_mismatch=node.hostkey_mismatch,
        bmc=node.bmc_url,
    )


def add_nodes(gc: Gpuctl, specs: list[NodeSpec], *, replace: bool = False) -> list[str]:
    """Register nodes in one transaction: all are added, or none.

    Args:
        replace: update the address/port/user/key/labels/SKU of nodes that exist.

    Raises:
        InputError: a name appears twice, or a node exists and ``replace`` is false.
    """
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise InputError(f"node {spec.name} is listed twice")
        seen.add(spec.name)
    actor = gc.actor
    with gc.session() as session:
        existing = {
            n.name: n for n in session.exec(select(Node).where(col(Node.name).in_(seen)))
        }
        if existing and not replace:
            names = ", ".join(sorted(existing))
            raise InputError(f"already registered: {names} (use --replace to update them)")
        for spec in specs:
            node = existing.get(spec.name) or Node(name=spec.name, address="")
            node.address = spec.address or spec.name
            node.port, node.user, node.key_path = spec.port, spec.user, spec.key_path
            node.labels_json = json.dumps(spec.labels, sort_keys=True)
            node.vars_json = json.dumps(spec.ansible_vars, sort_keys=True)
            node.sku = spec.sku
            node.bmc_url, node.bmc_user = spec.bmc_url, spec.bmc_user
            node.bmc_password_from, node.bmc_ca = spec.bmc_password_from, spec.bmc_ca
            session.add(node)
            try:
                session.flush()
            except IntegrityError as exc:
                raise InputError(f"node {spec.name} could not be stored: {exc.orig}") from exc
            verb = "updated" if spec.name in existing else "registered"
            bmc = f", BMC {node.bmc_url}" if node.bmc_url else ""
            record_event(session, node, "note", f"node {verb} at {node.address}:{node.port}"
                         f"{bmc}",
                         actor=actor, to_state=State.REGISTERED.value if verb == "registered"
                         else None)
    return [s.name for s in specs]


def list_nodes(
    gc: Gpuctl,
    *,
    state: str | None = None,
    sku: str | None = None,
    labels: dict[str, str] | None = None,
) -> list[NodeView]:
    """Nodes matching every filter given, ordered by name."""
    with gc.session() as session:
        # Columns, not ORM objects: 10,000 nodes list in a fraction of the time.
        query = select(Node.name, Node.address, Node.port, Node.user,  # type: ignore[call-overload]
                       Node.state, Node.sku, Node.labels_json, Node.last_scan_at,
                       Node.hostkey_mismatch, HardwareSnapshot.gpu_count,
                       HardwareSnapshot.pci_gpu_count, Node.bmc_url).join(
            HardwareSnapshot, col(HardwareSnapshot.id) == Node.last_snapshot_id, isouter=True
        )
        if state:
            query = query.where(Node.state == state)
        if sku:
            query = query.where(Node.sku == sku)
        rows = session.exec(query.order_by(Node.name)).all()
    views = [NodeView(name=r[0], address=r[1], port=r[2], user=r[3], state=r[4], sku=r[5],
                      labels=json.loads(r[6]), gpus=gpus_seen(r[9], r[10]),
                      last_scan=_iso(r[7]),
                      hostkey_mismatch=r[8], bmc=r[11]) for r in rows]
    if labels:
        views = [v for v in views if all(v.labels.get(k) == val for k, val in labels.items())]
    return views


def show_node(gc: Gpuctl, name: str, *, events: int = 50) -> NodeDetail:
    """The node, its latest hardware snapshot and its most recent events."""
    with gc.session() as session:
        node = get_node(session, name)
        snap = session.get(HardwareSnapshot, node.last_snapshot_id) if node.last_snapshot_id \
            else None
        gpus = nics = disks = []
        snap_dict = None
        if snap is not None:
            snap_dict = snap.model_dump(exclude={"facts_json"})
            snap_dict["taken_at"] = _iso(snap.taken_at)
            gpus = [g.model_dump(exclude={"id", "snapshot_id", "node_id"}) for g in session.exec(
                select(Gpu).where(Gpu.snapshot_id == snap.id).order_by(col(Gpu.index)))]
            nics = [n.model_dump(exclude={"id", "snapshot_id"}) for n in session.exec(
                select(Nic).where(Nic.snapshot_id == snap.id).order_by(Nic.name))]
            disks = [d.model_dump(exclude={"id", "snapshot_id"}) for d in session.exec(
                select(Disk).where(Disk.snapshot_id == snap.id).order_by(Disk.name))]
        history = session.exec(
            select(Event).where(Event.node_id == node.id)
            .order_by(col(Event.id).desc()).limit(events)
        ).all()
        evs = [
            {"at": _iso(e.at), "kind": e.kind, "severity": e.severity, "from": e.from_state,
             "to": e.to_state, "reason": e.reason, "actor": e.actor, "run": e.run_id}
            for e in reversed(history)
        ]
        view = _view(node, gpus_seen(snap.gpu_count, snap.pci_gpu_count) if snap else None)
        burnin, cert = _burnin_summary(session, node)
        remediation = _open_remediation(session, node)
    return NodeDetail(node=view, snapshot=snap_dict, gpus=gpus, nics=nics, disks=disks,
                      events=evs, burnin=burnin, certificate=cert, remediation=remediation)


def _open_remediation(session: Session, node: Node) -> dict[str, Any] | None:
    record = session.exec(select(Remediation).where(
        Remediation.node_id == node.id, col(Remediation.closed_at).is_(None))).first()
    if record is None:
        return None
    last = session.exec(select(RemediationEvent).where(
        RemediationEvent.remediation_id == record.id)
        .order_by(col(RemediationEvent.id).desc()).limit(1)).first()
    return {"id": record.id, "fault": record.fault, "state": record.state,
            "rung": record.rung, "since": _iso(last.at if last else record.opened_at),
            "why": last.message if last else ""}


def _burnin_summary(session: Session, node: Node
                    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The node's last burn-in (run, level, counts, failures) and newest certificate."""
    last_run = session.exec(select(func.max(BurninResult.run_id)).where(
        BurninResult.node_id == node.id)).one()
    burnin = None
    if last_run is not None:
        run = session.get(Run, last_run)
        rows = session.exec(select(BurninResult).where(
            BurninResult.node_id == node.id, BurninResult.run_id == last_run)).all()
        failed = [r.reason for r in rows if r.verdict != "pass"]
        burnin = {"run": last_run, "at": _iso(run.started_at) if run else None,
                  "level": json.loads(run.args_json or "{}").get("level") if run else None,
                  "tests": len(rows), "failed": len(failed), "failures": failed[:10]}
    c = session.exec(select(Certificate).where(Certificate.node_id == node.id)
                     .order_by(col(Certificate.id).desc()).limit(1)).first()
    cert = None
    if c is not None:
        cert = {"run": c.run_id, "profile": c.profile, "level": c.level,
                "driver_version": c.driver_version, "cuda_version": c.cuda_version,
                "issued_at": _iso(c.issued_at), "expires_at": _iso(c.expires_at),
                "expired": certificate_expired(c.expires_at), "results_digest": c.results_digest}
    return burnin, cert


def label_nodes(
    gc: Gpuctl, names: list[str], set_labels: dict[str, str], remove: list[str]
) -> list[NodeView]:
    """Set and remove labels on nodes; records one event per node."""
    actor = gc.actor
    with gc.session() as session:
        out = []
        for name in names:
            node = get_node(session, name)
            labels = json.loads(node.labels_json)
            labels.update(set_labels)
            for key in remove:
                labels.pop(key, None)
            node.labels_json = json.dumps(labels, sort_keys=True)
            session.add(node)
            changes = [f"{k}={v}" for k, v in set_labels.items()] + [f"-{k}" for k in remove]
            record_event(session, node, "note", "labels " + " ".join(changes), actor=actor)
            out.append(_view(node, None))
    return out


def forget_hostkey(gc: Gpuctl, name: str) -> bool:
    """Drop the node's known host key and clear its host-key-changed mark, so that the
    next ``scan --accept-new`` records the key it then sees. True if a key was on file."""
    from provisioner.ssh.hostkeys import KnownHosts  # noqa: PLC0415

    with gc.session() as session:
        node = get_node(session, name)
        had = KnownHosts(gc.paths.known_hosts).forget(node.address, node.port)
        node.hostkey_mismatch = False
        session.add(node)
        record_event(session, node, "hostkey", "host key forgotten by an admin",
                     actor=gc.actor)
    return had
