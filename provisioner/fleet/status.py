"""``gpuctl status``: the fleet in one screen, from aggregate queries only (no per-node
loop), so it stays fast at tens of thousands of nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case
from sqlmodel import Session, col, func, select

from provisioner.db.models import (
    Certificate,
    Event,
    HardwareSnapshot,
    Node,
    Remediation,
    RemediationEvent,
    Run,
    as_utc,
    certificate_expired,
    iso_utc,
)
from provisioner.fleet.pools import pool_views
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import SERVING, State
from provisioner.runs import recover_abandoned

BAD = (State.QUARANTINED.value, State.FAILED.value)


def latest_certificates() -> Any:
    """Subquery: each node's newest certificate id."""
    return (select(Certificate.node_id, func.max(Certificate.id).label("cert_id"))
            .group_by(col(Certificate.node_id)).subquery())


def fleet_status(gc: Gpuctl, now: datetime | None = None, expiring_days: int = 14,
                 attention_limit: int = 12) -> dict[str, Any]:
    """The ``gpuctl status`` document. Runs whose process died are recovered first, so
    their nodes show as failed (needing attention), not as in progress. (The CLI adds
    each hand-off target's own view, such as Slurm's.)"""
    recover_abandoned(gc)
    with gc.session() as session:
        return status_document(session, now, expiring_days, attention_limit)


def status_document(session: Session, now: datetime | None = None, expiring_days: int = 14,
                    attention_limit: int = 12) -> dict[str, Any]:
    """``fleet_status`` within a session the caller holds."""
    now = as_utc(now or datetime.now(UTC))
    soon = now + timedelta(days=expiring_days)
    states = dict(session.exec(select(Node.state, func.count(col(Node.id)))
                               .group_by(col(Node.state))).all())
    gpus = col(HardwareSnapshot.gpu_count)
    sku_rows = session.exec(
        select(Node.sku, func.count(col(Node.id)),  # type: ignore[call-overload]
               func.coalesce(func.sum(gpus), 0),
               func.coalesce(func.sum(case((col(Node.state).in_(SERVING), gpus), else_=0)), 0),
               func.coalesce(func.sum(case((col(Node.state) == State.IN_SERVICE.value, gpus),
                                           else_=0)), 0))
        .join(HardwareSnapshot, col(HardwareSnapshot.id) == Node.last_snapshot_id,
              isouter=True)
        .group_by(col(Node.sku)).order_by(col(Node.sku))).all()
    latest = latest_certificates()
    cert_rows = session.exec(
        select(Certificate.expires_at, Node.state)
        .join(latest, col(latest.c.cert_id) == Certificate.id)
        .join(Node, col(Node.id) == Certificate.node_id)
        .where(col(Node.state).in_(SERVING))).all()
    expired = sum(1 for exp, _ in cert_rows if certificate_expired(exp, now))
    expiring = sum(1 for exp, _ in cert_rows if exp is not None
                   and not certificate_expired(exp, now) and as_utc(exp) < soon)
    attention_q = (
        select(Node.name, Node.state, Node.hostkey_mismatch, Certificate.expires_at)
        .join(latest, col(latest.c.node_id) == Node.id, isouter=True)
        .join(Certificate, col(Certificate.id) == latest.c.cert_id, isouter=True)
        .where(col(Node.state).in_(BAD) | col(Node.hostkey_mismatch)
               | (col(Node.state).in_(SERVING) & (col(Certificate.expires_at) < now)))
        .order_by(col(Node.name)))
    needing = session.exec(select(func.count()).select_from(attention_q.subquery())).one()
    attention = []
    for name, state, mismatch, exp in session.exec(attention_q.limit(attention_limit)).all():
        # Why it is in this state: the reason of its last state change.
        event = session.exec(select(Event.at, Event.reason).join(
            Node, col(Node.id) == Event.node_id).where(Node.name == name, Event.kind == "state")
            .order_by(col(Event.id).desc()).limit(1)).first()
        why = ("host key changed" if mismatch else
               f"certificate expired {iso_utc(exp)[:10]}; re-run burn-in"  # type: ignore[index]
               if state in SERVING else (event[1] if event else ""))
        attention.append({"node": name, "state": state, "since": iso_utc(event[0]) if event
                          else None, "reason": why})
    day_ago = now - timedelta(days=1)
    drift_24h = session.exec(select(func.count()).select_from(Event).where(
        col(Event.kind).in_(("drift", "fault")), col(Event.at) >= day_ago)).one()
    runs = {}
    for kind in ("scan", "provision", "burnin", "monitor"):
        run = session.exec(select(Run).where(Run.kind == kind)
                           .order_by(col(Run.id).desc()).limit(1)).first()
        if run is not None:
            runs[kind] = {"id": run.id, "status": run.status, "actor": run.actor,
                          "started_at": iso_utc(run.started_at),
                          "finished_at": iso_utc(run.finished_at)}
    pools = [p.to_dict() for p in pool_views(session, detail=False)]
    remediation = {"open": open_remediations(session)}
    total_nodes = sum(states.values())
    return {
        "generated_at": iso_utc(now), "nodes": total_nodes,
        "gpus": sum(int(r[2]) for r in sku_rows),
        "states": {s.value: int(states.get(s.value, 0)) for s in State
                   if states.get(s.value)},
        "skus": [{"sku": sku or "unknown", "nodes": int(n), "gpus": int(g),
                  "certified_gpus": int(c), "in_service_gpus": int(i)}
                 for sku, n, g, c, i in sku_rows],
        "certification": {"certified": int(states.get(State.CERTIFIED.value, 0)),
                          "in_service": int(states.get(State.IN_SERVICE.value, 0)),
                          "quarantined": int(states.get(State.QUARANTINED.value, 0)),
                          "failed": int(states.get(State.FAILED.value, 0)),
                          "expired": expired, f"expiring_{expiring_days}d": expiring},
        "drift_events_24h": int(drift_24h),
        "attention": {"total": int(needing), "nodes": attention},
        "last_runs": runs, "pools": pools, "remediation": remediation,
    }


def open_remediations(session: Session) -> list[dict[str, Any]]:
    """Every open remediation (``provisioner.heal``): node, fault, state, rung, since and
    why (its last event's words: the circuit breaker's reason for a node held back)."""
    last = (select(func.max(col(RemediationEvent.id)).label("id"))
            .group_by(col(RemediationEvent.remediation_id)).subquery())
    rows = session.exec(
        select(Node.name, Remediation, RemediationEvent)
        .join(Remediation, col(Remediation.node_id) == Node.id)
        .join(RemediationEvent, col(RemediationEvent.remediation_id) == Remediation.id)
        .join(last, col(last.c.id) == RemediationEvent.id)
        .where(col(Remediation.closed_at).is_(None)).order_by(col(Node.name))).all()
    return [{"node": name, "id": rec.id, "fault": rec.fault, "state": rec.state,
             "rung": rec.rung, "since": iso_utc(ev.at), "why": ev.message}
            for name, rec, ev in rows]
