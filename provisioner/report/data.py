"""Everything a burn-in report shows, gathered from the database into one JSON-able
document; every output format renders this same document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from provisioner.db.models import (
    BurninArtifact,
    BurninResult,
    Certificate,
    Event,
    Node,
    Run,
    iso_utc,
)
from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import get_node


def _find_run(session: Session, run_id: int | None, node: Node | None) -> Run:
    if run_id is not None:
        run = session.get(Run, run_id)
        if run is None or run.kind != "burnin":
            raise InputError(f"run {run_id} is not a burn-in run"
                             if run else f"no run {run_id}")
        return run
    query = select(Run).where(Run.kind == "burnin").order_by(col(Run.id).desc())
    if node is not None:
        query = query.where(col(Run.id).in_(
            select(BurninResult.run_id).where(BurninResult.node_id == node.id).union(
                select(Event.run_id).where(Event.node_id == node.id,
                                           col(Event.run_id).is_not(None)))))
    run = session.exec(query.limit(1)).first()
    if run is None:
        raise InputError(f"{node.name} has no burn-in run" if node else
                         "there is no burn-in run yet; run gpuctl burnin first")
    return run


def report_data(gc: Gpuctl, run_id: int | None = None,
                node_name: str | None = None) -> dict[str, Any]:
    """The report document for burn-in run ``run_id`` (default: the latest), for every
    node in it or only ``node_name`` (default run: that node's latest).

    Raises:
        InputError: no such run or node, or no burn-in yet.
    """
    with gc.session() as session:
        return _report(session, run_id, node_name)


def _report(session: Session, run_id: int | None, node_name: str | None) -> dict[str, Any]:
    only = get_node(session, node_name) if node_name else None
    run = _find_run(session, run_id, only)
    args = json.loads(run.args_json or "{}")
    names = [n for n in args.get("nodes", []) if isinstance(n, str)]
    if only is not None:
        if only.name not in names:
            raise InputError(f"{only.name} was not in burn-in run {run.id}")
        names = [only.name]
    nodes_by_name = {n.name: n for n in session.exec(
        select(Node).where(col(Node.name).in_(names))).all()}
    results = session.exec(select(BurninResult).where(BurninResult.run_id == run.id)
                           .order_by(col(BurninResult.id))).all()
    artifacts = session.exec(select(BurninArtifact)
                             .where(BurninArtifact.run_id == run.id)).all()
    certs = {c.node_id: c for c in session.exec(
        select(Certificate).where(Certificate.run_id == run.id)).all()}
    events = session.exec(select(Event).where(Event.run_id == run.id, Event.kind == "state")
                          .order_by(col(Event.id))).all()
    out_nodes = []
    for name in names:
        node = nodes_by_name.get(name)
        if node is None:  # removed from the inventory since
            continue
        rows = [r for r in results if r.node_id == node.id]
        arts = {a.kind: json.loads(a.content_json or "{}") for a in artifacts
                if a.node_id == node.id}
        last = [e for e in events if e.node_id == node.id]
        outcome = last[-1].to_state if last else None
        failed = [r for r in rows if r.verdict != "pass"]
        verdict = "pass" if outcome == "certified" else "fail" if rows else "error"
        cert = certs.get(node.id) if node.id is not None else None
        agent = arts.get("agent", {})
        out_nodes.append({
            "name": node.name, "sku": node.sku, "state_now": node.state,
            "verdict": verdict, "outcome": outcome,
            "reason": last[-1].reason if last else "",
            "failures": [r.reason for r in failed],
            "certificate": None if cert is None else {
                "profile": cert.profile, "level": cert.level,
                "driver_version": cert.driver_version, "cuda_version": cert.cuda_version,
                "results_digest": cert.results_digest, "issued_at": iso_utc(cert.issued_at),
                "expires_at": iso_utc(cert.expires_at)},
            "results": [{"test": r.test, "gpu": r.gpu_index, "value": r.value,
                         "unit": r.unit, "threshold": r.threshold, "verdict": r.verdict,
                         "reason": r.reason} for r in rows],
            "backend": agent.get("backend"),
            "telemetry": (agent.get("telemetry") or {}).get("samples") or [],
            "nvlink": agent.get("nvlink"),
            "p2p_matrix": agent.get("p2p_matrix"),
            "collectives": agent.get("collectives") or {},
            "dcgm": arts.get("dcgm"),
        })
    passed = sum(1 for n in out_nodes if n["verdict"] == "pass")
    return {
        "report": "gpuctl burn-in", "generated_at": iso_utc(datetime.now(UTC)),
        "run": {"id": run.id, "actor": run.actor, "status": run.status,
                "started_at": iso_utc(run.started_at), "finished_at": iso_utc(run.finished_at),
                "level": args.get("level"), "duration": args.get("seconds"),
                "with_dcgm": bool(args.get("with_dcgm"))},
        "summary": {"nodes": len(out_nodes), "passed": passed,
                    "failed": len(out_nodes) - passed},
        "nodes": out_nodes,
    }
