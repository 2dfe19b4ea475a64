"""Hand certified nodes to the systems that run training: Slurm, Kubernetes, Ansible and
Prometheus. Only nodes with a valid certificate are handed off; certified ones move to
in-service (nodes already in service are included again, so the output is the whole
serving fleet, ready to replace the previous one)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml
from sqlmodel import Session, col, func, select

from provisioner.catalogue import Sku
from provisioner.db.models import (
    BurninResult,
    Certificate,
    Gpu,
    HardwareSnapshot,
    Node,
    as_utc,
)
from provisioner.errors import InputError
from provisioner.fleet.status import SERVING, latest_certificates
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, transition
from provisioner.inventory.validate import check_stored_node
from provisioner.runs import RunScope, recover_abandoned

# Slurm keeps RealMemory a little under MemTotal so a node is never drained for "low
# RealMemory" after a kernel update takes a few MiB more.
REAL_MEMORY_FRACTION = 0.97


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
    # From the SKU's catalogue file ("" for a SKU the catalogue does not know).
    gres_type: str = ""
    family: str = ""
    compute: str = ""
    # The node's host variables (gpuctl_slurmd_port, gpuctl_burnin_python, ...).
    host_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class HandoffInput:
    """What a hand-off writer renders: the nodes handed off, and (for Prometheus) every
    node's (name, SKU, state)."""

    nodes: list[HandoffNode]
    fleet: list[tuple[str, str | None, str]]


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
             verify: Callable[[list[HandoffNode]], dict[str, str]] | None = None
             ) -> HandoffResult:
    """Hand the certified nodes (``names``, or all; one SKU with ``sku``) to ``target``:
    ``write`` renders and stores the output, ``verify`` (when given) checks that the
    target took each node, then the nodes it took move to in-service (unless
    ``dry_run``), in one run that holds their locks.

    Raises:
        InputError: no node to hand off (Prometheus is written even then: it lists every
            node's state).
        NodeBusyError: a run holds one of the nodes.
    """
    recover_abandoned(gc)
    with gc.session() as session:
        chosen, skipped = select_handoff(session, gc.skus(), names, sku)
        fleet = [tuple(r) for r in session.exec(select(Node.name, Node.sku, Node.state)
                                                .order_by(col(Node.name))).all()]
        rows = list(session.exec(select(Node).where(
            col(Node.name).in_([n.name for n in chosen])).order_by(col(Node.name))))
    if not chosen and target != "prometheus":
        raise InputError("no certified node to hand off (burn nodes in first)" + (
            ": " + "; ".join(skipped[:5]) if skipped else ""))
    args = {"target": target, "nodes": [n.name for n in chosen], "dry_run": dry_run}
    with RunScope(gc, "handoff", args, rows) as run:
        written = write(HandoffInput(chosen, fleet))  # type: ignore[arg-type]
        problems = verify(chosen) if verify is not None else {}
        accepted = [n for n in chosen if n.name not in problems]
        moved = 0 if dry_run else mark_in_service(gc, accepted, target, run.run_id)
        run.node_ok = {n.name: n.name not in problems for n in chosen}
        run.summary = {"handed_off": [n.name for n in accepted], "moved": moved,
                       "written": written, "problems": problems}
    return HandoffResult(target, run.run_id, [n.name for n in accepted], skipped, written,
                         moved, problems)


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
        if cert.expires_at is not None and as_utc(cert.expires_at) < now:
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
            gres_type=sku_info.gres_type if sku_info else "",
            family=sku_info.family if sku_info else "",
            compute=sku_info.compute if sku_info else "",
            host_vars={k: str(v) for k, v in json.loads(node.vars_json or "{}").items()}))
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


# -- Slurm -------------------------------------------------------------------------------

def _slurm_word(text: str) -> str:
    """Slurm feature names: letters, digits, '_' and '-' ('.' becomes '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:60]


def gres_type(n: HandoffNode) -> str:
    """The node's GPU type in ``Gres=gpu:<type>:<n>`` and gres.conf ``Type=``."""
    return n.gres_type or _slurm_word(n.sku).lower()


def real_memory_mib(n: HandoffNode) -> int | None:
    """``RealMemory=``: a little under MemTotal (REAL_MEMORY_FRACTION)."""
    return int(n.memory_mib * REAL_MEMORY_FRACTION) if n.memory_mib else None


def render_slurm(nodes: list[HandoffNode], partition: str | None = None) -> dict[str, str]:
    """slurm.conf NodeName lines (plus a PartitionName line when asked) and gres.conf."""
    conf = ["# Generated by gpuctl: certified GPU nodes. Include from slurm.conf.",
            "GresTypes=gpu"]
    gres = ["# Generated by gpuctl: GPU devices of certified nodes."]
    for n in nodes:
        check_stored_node(n.name, n.address)
        gtype = gres_type(n)
        features = [gtype, _slurm_word(n.sku)] + [
            _slurm_word(f"{k}_{v}") for k, v in sorted(n.labels.items())
            if not k.startswith("lab")]
        parts = [f"NodeName={n.name}", f"NodeAddr={n.address}"]
        if n.cpus:
            parts.append(f"CPUs={n.cpus}")
        if n.sockets and n.cores and n.cpus and n.cores % n.sockets == 0:
            parts += [f"Boards=1 SocketsPerBoard={n.sockets}",
                      f"CoresPerSocket={n.cores // n.sockets}",
                      f"ThreadsPerCore={max(1, n.cpus // n.cores)}"]
        if n.memory_mib:
            parts.append(f"RealMemory={real_memory_mib(n)}")
        if n.gpus:
            parts.append(f"Gres=gpu:{gtype}:{n.gpus}")
            last = n.gpus - 1
            gres.append(f"NodeName={n.name} Name=gpu Type={gtype} "
                        f"File=/dev/nvidia[0-{last}]" if last else
                        f"NodeName={n.name} Name=gpu Type={gtype} File=/dev/nvidia0")
        port = n.host_vars.get("gpuctl_slurmd_port", "")
        if port.isdigit():
            # Several slurmd on one host (the lab's nodes share a loopback): each its own.
            parts.append(f"Port={port}")
        parts += [f"Features={','.join(dict.fromkeys(features))}", "State=UNKNOWN"]
        conf.append(" ".join(parts))
    if partition and nodes:
        conf.append(f"PartitionName={partition} Nodes={','.join(n.name for n in nodes)} "
                    "Default=NO MaxTime=INFINITE State=UP")
    return {"slurm.conf": "\n".join(conf) + "\n", "gres.conf": "\n".join(gres) + "\n"}


# -- Kubernetes --------------------------------------------------------------------------

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


def _k8s_value(text: str) -> str:
    """A label value as GPU Feature Discovery writes it: spaces to '-', at most 63
    characters, alphanumeric at both ends."""
    value = _LABEL_VALUE.sub("-", text.strip().replace(" ", "-"))[:63]
    return value.strip("-_.")


def k8s_labels(n: HandoffNode) -> dict[str, str]:
    labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(n.gpus)}
    if n.gpu_model:
        labels["nvidia.com/gpu.product"] = _k8s_value(n.gpu_model)
    if n.gpu_memory_mib:
        labels["nvidia.com/gpu.memory"] = str(n.gpu_memory_mib)
    if n.family and n.compute:
        labels["nvidia.com/gpu.family"] = n.family
        major, minor = n.compute.split(".")
        labels["nvidia.com/gpu.compute.major"] = major
        labels["nvidia.com/gpu.compute.minor"] = minor
    if n.driver and n.driver.count(".") >= 1:
        parts = n.driver.split(".")
        labels["nvidia.com/cuda.driver.major"] = parts[0]
        labels["nvidia.com/cuda.driver.minor"] = parts[1]
        if len(parts) > 2:
            labels["nvidia.com/cuda.driver.rev"] = parts[2]
    if n.cuda and "." in n.cuda:
        labels["nvidia.com/cuda.runtime.major"], labels["nvidia.com/cuda.runtime.minor"] = \
            n.cuda.split(".")[:2]
    labels["gpuctl.io/sku"] = _k8s_value(n.sku)
    labels["gpuctl.io/certified"] = "true"
    labels["gpuctl.io/certificate-profile"] = _k8s_value(n.cert_profile)
    if n.cert_expires:
        labels["gpuctl.io/certificate-expires"] = n.cert_expires.strftime("%Y-%m-%d")
    return {k: v for k, v in labels.items() if v}


def render_k8s(nodes: list[HandoffNode]) -> str:
    """A List of Node objects carrying only labels: ``kubectl apply -f`` merges them into
    the existing nodes (the node name must be the Kubernetes node name)."""
    doc = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": n.name, "labels": k8s_labels(n)}} for n in nodes]}
    return "# Generated by gpuctl: labels of certified GPU nodes (kubectl apply -f FILE)\n" + \
        yaml.safe_dump(doc, sort_keys=False)


# -- Prometheus --------------------------------------------------------------------------

def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(fleet: list[tuple[str, str | None, str]], nodes: list[HandoffNode],
                      now: datetime | None = None) -> str:
    """A node-exporter textfile: every node's state, and for handed-off nodes the
    certificate's age and expiry and their burn-in figures."""
    now = now or datetime.now(UTC)
    lines = ["# Generated by gpuctl: node states, certificates and burn-in figures",
             "# HELP gpuctl_node_state 1 for the node's current gpuctl lifecycle state.",
             "# TYPE gpuctl_node_state gauge"]
    for name, sku, state in fleet:
        lines.append(f'gpuctl_node_state{{node="{_esc(name)}",sku="{_esc(sku or "")}",'
                     f'state="{_esc(state)}"}} 1')
    lines += ["# HELP gpuctl_certificate_age_seconds Seconds since the node's burn-in "
              "certificate was issued.", "# TYPE gpuctl_certificate_age_seconds gauge"]
    for n in nodes:
        lines.append(f'gpuctl_certificate_age_seconds{{node="{_esc(n.name)}",'
                     f'profile="{_esc(n.cert_profile)}"}} '
                     f"{max(0.0, (now - n.cert_issued).total_seconds()):.0f}")
    lines += ["# HELP gpuctl_certificate_expiry_timestamp_seconds When the certificate "
              "expires (Unix time).", "# TYPE gpuctl_certificate_expiry_timestamp_seconds gauge"]
    for n in nodes:
        if n.cert_expires:
            lines.append(f'gpuctl_certificate_expiry_timestamp_seconds{{node="{_esc(n.name)}"}}'
                         f" {n.cert_expires.timestamp():.0f}")
    lines += ["# HELP gpuctl_burnin_value Burn-in measurement behind the node's certificate "
              "(unit in the unit label).", "# TYPE gpuctl_burnin_value gauge"]
    for n in nodes:
        for test, gpu_index, value, unit in n.results:
            gpu = "" if gpu_index is None else str(gpu_index)
            lines.append(f'gpuctl_burnin_value{{node="{_esc(n.name)}",test="{_esc(test)}",'
                         f'gpu="{gpu}",unit="{_esc(unit)}"}} {value:.6g}')
    return "\n".join(lines) + "\n"


# -- Ansible -----------------------------------------------------------------------------

def render_ansible(nodes: list[HandoffNode]) -> str:
    """A YAML inventory of the handed-off nodes: group ``gpuctl_in_service`` with
    children per SKU, plus the facts training playbooks ask for as host variables."""
    groups: dict[str, Any] = {}
    for n in nodes:
        group = "sku_" + re.sub(r"[^a-z0-9_]", "_", n.sku.lower())
        groups.setdefault(group, {"hosts": {}})["hosts"][n.name] = {
            "ansible_host": n.address, "gpuctl_gpus": n.gpus,
            "gpuctl_gpu_model": n.gpu_model or "", "gpuctl_driver_version": n.driver or "",
            "gpuctl_certificate_expires": n.cert_expires.isoformat() if n.cert_expires
            else ""}
    doc = {"all": {"children": {"gpuctl_in_service": {"children": groups}}}}
    return "# Generated by gpuctl: certified GPU nodes handed off for training\n" + \
        yaml.safe_dump(doc, sort_keys=True)

