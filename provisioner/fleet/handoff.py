"""Hand certified nodes to the systems that run training. Only nodes with a valid
certificate are handed off; certified ones move to in-service (nodes already in service
are included again, so the output is the whole serving fleet, ready to replace the
previous one).

Each system is a ``Target`` (one module in ``provisioner/targets/``: Slurm, Kubernetes,
Ansible, Prometheus, hosts): its name, how it renders the nodes, where its output goes by
default, and optionally how it applies them to a live system, a listener that mirrors
later state changes, and a view for ``gpuctl status``. This module is what every target
shares: choosing the nodes and the run that moves them in service."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlmodel import Session, col, func, select

from provisioner.catalogue import Sku
from provisioner.db.models import (
    BurninResult,
    Certificate,
    Gpu,
    HardwareSnapshot,
    Node,
    Remediation,
    RemediationEvent,
    as_utc,
    certificate_expired,
)
from provisioner.errors import InputError
from provisioner.events import Listener
from provisioner.fleet.status import SERVING, latest_certificates
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, transition
from provisioner.runs import RunScope, recover_abandoned


def gpu_devices(facts: dict[str, Any]) -> list[tuple[str, int | None, int | None]]:
    """The scan's GPUs in PCI bus order, each with its device minor (nvidia-smi) and the
    CPU socket its PCI device is local to (sysfs ``local_cpulist``), where known. Bus
    ids are compared on their last 12 characters: nvidia-smi writes an 8-digit PCI
    domain, sysfs a 4-digit one."""
    sockets = {str(p.get("bus_id") or "")[-12:]: p.get("socket")
               for p in facts.get("pci_gpus") or [] if isinstance(p, dict)}
    out = []
    for gpu in facts.get("gpus") or []:
        if not isinstance(gpu, dict):
            continue
        bus = str(gpu.get("pci_bus_id") or "").lower()[-12:]
        minor, socket = gpu.get("minor_number"), sockets.get(bus)
        out.append((bus, minor if isinstance(minor, int) else None,
                    socket if isinstance(socket, int) else None))
    return sorted(out)


@dataclass
class HandoffNode:
    name: str
    address: str
    sku: str
    state: str
    cpus: int | None
    sockets: int | None
    cores: int | None
    memory_mib: int | None
    gpus: int
    gpu_model: str | None
    gpu_memory_mib: int | None
    driver: str | None
    cuda: str | None
    labels: dict[str, str]
    cert_issued: datetime
    cert_expires: datetime | None
    cert_profile: str
    cert_run: int
    # The burn-in measurements behind the certificate: (test, GPU index, value, unit).
    results: list[tuple[str, int | None, float, str]] = field(default_factory=list)
    # From the SKU's catalogue file ("" for a SKU the catalogue does not know), and the
    # SKU's part for each target (``slurm: {gres_type: h100}``).
    family: str = ""
    compute: str = ""
    # The node's host variables (gpuctl_slurmd_port, gpuctl_burnin_python, ...).
    host_vars: dict[str, str] = field(default_factory=dict)
    target_parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each GPU in PCI bus order: (bus id, /dev/nvidia minor, CPU socket it is local to).
    gpu_devices: list[tuple[str, int | None, int | None]] = field(default_factory=list)

    def part(self, target: str) -> dict[str, Any]:
        """The SKU's settings for ``target`` (empty when its file has none)."""
        return self.target_parts.get(target) or {}


@dataclass
class HandoffInput:
    """What a hand-off writer renders: the nodes handed off, and (for Prometheus) every
    node's (name, SKU, state)."""

    nodes: list[HandoffNode]
    fleet: list[tuple[str, str | None, str]]
    # Remediation (provisioner.heal): rungs ended, as (rung, outcome, count), and each
    # open remediation's (node, state).
    rungs: list[tuple[str, str, int]] = field(default_factory=list)
    loops: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class HandoffResult:
    target: str
    run_id: int
    nodes: list[str]
    skipped: list[str]
    written: str
    moved: int
    # Nodes the target did not accept (``verify``), with why: they stay certified.
    problems: dict[str, str] = field(default_factory=dict)


def hand_off(gc: Gpuctl, target: str, names: list[str], sku: str | None, *,
             dry_run: bool, write: Callable[[HandoffInput], str],
             verify: Callable[[list[HandoffNode]], dict[str, str]] | None = None,
             always: bool = False) -> HandoffResult:
    """Hand the certified nodes (``names``, or all; one SKU with ``sku``) to ``target``:
    ``write`` renders and stores the output, ``verify`` (when given) checks that the
    target took each node, then the nodes it took move to in-service (unless
    ``dry_run``), in one run that holds their locks.

    Raises:
        InputError: no node to hand off (unless ``always``: a target that lists every
            node's state is written even then).
        NodeBusyError: a run holds one of the nodes.
    """
    recover_abandoned(gc)
    with gc.session() as session:
        chosen, skipped = select_handoff(session, gc.skus(), names, sku)
        fleet = [tuple(r) for r in session.exec(select(Node.name, Node.sku, Node.state)
                                                .order_by(col(Node.name))).all()]
        rows = list(session.exec(select(Node).where(
            col(Node.name).in_([n.name for n in chosen])).order_by(col(Node.name))))
        rungs, loops = remediation_counts(session)
    if not chosen and not always:
        raise InputError("no certified node to hand off (burn nodes in first)" + (
            ": " + "; ".join(skipped[:5]) if skipped else ""))
    args = {"target": target, "nodes": [n.name for n in chosen], "dry_run": dry_run}
    with RunScope(gc, "handoff", args, rows) as run:
        written = write(HandoffInput(chosen, fleet, rungs, loops))  # type: ignore[arg-type]
        problems = verify(chosen) if verify is not None else {}
        accepted = [n for n in chosen if n.name not in problems]
        moved = 0 if dry_run else mark_in_service(gc, accepted, target, run.run_id)
        run.node_ok = {n.name: n.name not in problems for n in chosen}
        run.summary = {"handed_off": [n.name for n in accepted], "moved": moved,
                       "written": written, "problems": problems}
    return HandoffResult(target, run.run_id, [n.name for n in accepted], skipped, written,
                         moved, problems)


def remediation_counts(session: Session) -> tuple[list[tuple[str, str, int]],
                                                    list[tuple[str, str]]]:
    """Every rung that ended, counted by (rung, outcome), and each open remediation's
    (node, state)."""
    rungs = session.exec(
        select(RemediationEvent.rung, RemediationEvent.outcome,
               func.count(col(RemediationEvent.id)))
        .where(col(RemediationEvent.outcome).is_not(None))
        .group_by(col(RemediationEvent.rung), col(RemediationEvent.outcome))
        .order_by(col(RemediationEvent.rung), col(RemediationEvent.outcome))).all()
    loops = session.exec(select(Node.name, Remediation.state)
                         .join(Remediation, col(Remediation.node_id) == Node.id)
                         .where(col(Remediation.closed_at).is_(None))
                         .order_by(col(Node.name))).all()
    return ([(str(r), str(o), int(n)) for r, o, n in rungs],
            [(name, state) for name, state in loops])


def select_handoff(session: Session, skus: dict[str, Sku], names: list[str], sku: str | None,
                   now: datetime | None = None) -> tuple[list[HandoffNode], list[str]]:
    """Certified and in-service nodes with a valid certificate (optionally only ``names``
    or one SKU); returns them and a line for each named node that was left out."""
    now = now or datetime.now(UTC)
    latest = latest_certificates()
    query = (select(Node, Certificate, HardwareSnapshot)
             .join(latest, col(latest.c.node_id) == Node.id)
             .join(Certificate, col(Certificate.id) == latest.c.cert_id)
             .join(HardwareSnapshot, col(HardwareSnapshot.id) == Node.last_snapshot_id,
                   isouter=True)
             .where(col(Node.state).in_(SERVING)).order_by(col(Node.name)))
    if sku:
        query = query.where(Node.sku == sku)
    if names:
        query = query.where(col(Node.name).in_(names))
    out, skipped = [], []
    valid = []
    for node, cert, snap in session.exec(query).all():
        if cert.expires_at is not None and certificate_expired(cert.expires_at, now):
            skipped.append(f"{node.name}: certificate expired "
                           f"{as_utc(cert.expires_at).date()}; re-run burn-in")
        else:
            valid.append((node, cert, snap))
    # One query each for every node's first GPU and certified results, not one per node.
    snap_ids = [snap.id for _, _, snap in valid if snap is not None]
    first = (select(Gpu.snapshot_id, func.min(Gpu.index).label("first"))
             .where(col(Gpu.snapshot_id).in_(snap_ids)).group_by(col(Gpu.snapshot_id))
             .subquery())
    gpus = {g.snapshot_id: g for g in session.exec(select(Gpu).join(
        first, (col(first.c.snapshot_id) == Gpu.snapshot_id)
        & (col(first.c.first) == Gpu.index)))}
    certified = {(node.id, cert.run_id) for node, cert, _ in valid}
    results: dict[int | None, list[tuple[str, int | None, float, str]]] = {}
    for r in session.exec(select(BurninResult).where(
            col(BurninResult.node_id).in_([n for n, _ in certified]),
            col(BurninResult.run_id).in_({run for _, run in certified}))
            .order_by(col(BurninResult.id))):
        if (r.node_id, r.run_id) in certified and r.value is not None \
                and math.isfinite(r.value):
            results.setdefault(r.node_id, []).append((r.test, r.gpu_index, r.value, r.unit))
    for node, cert, snap in valid:
        facts = json.loads(snap.facts_json) if snap and snap.facts_json else {}
        gpu = gpus.get(snap.id) if snap and snap.id is not None else None
        sku_info = skus.get(node.sku or "")
        out.append(HandoffNode(
            name=node.name, address=node.address, sku=node.sku or "unknown",
            state=node.state, cpus=facts.get("cpu_threads") or (snap.cpu_cores if snap else
                                                                 None),
            sockets=snap.cpu_sockets if snap else None, cores=snap.cpu_cores if snap else None,
            memory_mib=(snap.memory_bytes >> 20) if snap and snap.memory_bytes else None,
            gpus=(snap.gpu_count if snap and snap.gpu_count else
                  sku_info.gpu_count if sku_info else 0),
            gpu_model=gpu.model if gpu else None,
            gpu_memory_mib=gpu.memory_mib if gpu else None,
            driver=snap.driver_version if snap else None,
            cuda=snap.cuda_version if snap else None,
            labels=json.loads(node.labels_json or "{}"), cert_issued=as_utc(cert.issued_at),
            cert_expires=as_utc(cert.expires_at) if cert.expires_at else None,
            cert_profile=cert.profile, cert_run=cert.run_id,
            results=results.get(node.id, []),
            target_parts=dict(sku_info.targets) if sku_info else {},
            family=sku_info.family if sku_info else "",
            compute=sku_info.compute if sku_info else "",
            host_vars={k: str(v) for k, v in json.loads(node.vars_json or "{}").items()},
            gpu_devices=gpu_devices(facts)))
    found = {n.name for n in out} | {s.split(":")[0] for s in skipped}
    for name in names:
        if name not in found:
            other = session.exec(select(Node).where(Node.name == name)).first()
            skipped.append(f"{name}: not in the inventory" if other is None else
                           f"{name}: {other.state}, not certified")
    return out, skipped


def mark_in_service(gc: Gpuctl, nodes: list[HandoffNode], target: str,
                    run_id: int | None = None) -> int:
    """Certified nodes become in-service; returns how many moved."""
    moved = 0
    with gc.session() as session:
        for node in session.exec(select(Node).where(
                col(Node.name).in_([h.name for h in nodes]),
                Node.state == State.CERTIFIED.value).order_by(col(Node.name))):
            transition(session, node, State.IN_SERVICE, actor=gc.actor, run_id=run_id,
                       reason=f"handed off to {target}")
            moved += 1
    return moved


@dataclass(frozen=True)
class TargetOption:
    """An option of a target's command (``--partition``), as data: the CLI makes it a
    click option. ``type`` is str, int, float, bool (a flag) or Path."""

    name: str
    help: str
    type: type = str
    default: Any = None
    envvar: str | None = None
    limits: tuple[float, float] | None = None  # inclusive range of an int or float


class Applied(Protocol):
    """What a target's ``apply`` returns: the hand-off run's result and its own facts."""

    result: HandoffResult

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Target:
    """One system nodes are handed off to (see the module docstring).

    ``render`` turns the nodes into files (name -> text; a one-file target's name is its
    ``default_output``'s); ``directory`` says the output is a folder of those files.
    ``apply`` puts the nodes into the live system (with ``apply_options``) and moves the
    ones it took in service; ``listener`` mirrors every later state change there;
    ``view`` is that system's view of the nodes for ``gpuctl status``.
    """

    name: str
    help: str
    default_output: str
    render: Callable[[HandoffInput, dict[str, Any]], dict[str, str]]
    directory: bool = False
    options: tuple[TargetOption, ...] = ()
    # Written even with no node to hand off (a metrics file lists every node's state).
    always: bool = False
    apply: Callable[[Gpuctl, list[str], str | None, dict[str, Any]], Applied] | None = None
    apply_help: str = ""
    apply_options: tuple[TargetOption, ...] = ()
    listener: Callable[[], Listener] | None = None
    view: Callable[[Gpuctl], dict[str, Any] | None] | None = None
