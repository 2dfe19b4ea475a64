"""Each node's remediation as a record with an append-only event log.

The states follow NVIDIA NVSentinel's (quarantined, draining, drain-succeeded,
remediating, remediation-succeeded) with gpuctl's own: ``waiting-breaker`` (the circuit
breaker holds it; it stays drained), ``re-certifying`` (burn-in after the rung),
``in-service`` (closed: the fault cleared), ``rma`` (closed: a ticket was asked for),
``failed`` (closed: a person takes over). A record is open until one of the last three.

The functions take the caller's session and never commit: the caller's transaction
holds the record with whatever else changed (the node's lifecycle state, its events).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from provisioner.db.models import Remediation, RemediationEvent, as_utc, utcnow
from provisioner.errors import GpuctlError, TransitionError
from provisioner.remediate.plan import OUTCOMES, Attempt
from provisioner.remediate.policy import LADDER

OPEN = ("quarantined", "waiting-breaker", "draining", "drain-succeeded", "remediating",
        "remediation-succeeded", "re-certifying")
CLOSED = ("in-service", "rma", "failed")
STATES = OPEN + CLOSED
# ``remediating`` again is the next rung after a failed one; ``re-certifying`` back to
# ``remediating`` is a rung whose burn-in failed.
MOVES: dict[str, frozenset[str]] = {
    "quarantined": frozenset({"waiting-breaker", "draining", "rma", "failed"}),
    "waiting-breaker": frozenset({"draining", "rma", "failed"}),
    "draining": frozenset({"drain-succeeded", "failed"}),
    "drain-succeeded": frozenset({"remediating", "rma", "failed"}),
    "remediating": frozenset({"remediating", "remediation-succeeded", "rma", "failed"}),
    "remediation-succeeded": frozenset({"re-certifying", "failed"}),
    "re-certifying": frozenset({"in-service", "remediating", "rma", "failed"}),
    "in-service": frozenset(),
    "rma": frozenset(),
    "failed": frozenset(),
}


def open_remediation(session: Session, node_id: int, *, fault: str, rule: str,
                     actor: str, message: str,
                     evidence: dict[str, Any] | None = None) -> Remediation:
    """Open the node's record for ``fault`` in state ``quarantined``.

    Raises:
        GpuctlError: the node already has an open record (one at a time per node).
    """
    current = open_remediation_of(session, node_id)
    if current is not None:
        raise GpuctlError(f"node {node_id} already has remediation {current.id} open "
                          f"({current.fault}, {current.state})")
    record = Remediation(node_id=node_id, fault=fault, rule=rule, state="quarantined",
                         actor=actor)
    session.add(record)
    session.flush()
    _event(session, record, None, "quarantined", actor=actor, message=message,
           before=evidence)
    return record


def advance(session: Session, record: Remediation, to: str, *, actor: str, message: str,
            rung: str | None = None, outcome: str | None = None,
            before: dict[str, Any] | None = None,
            after: dict[str, Any] | None = None) -> RemediationEvent:
    """Move ``record`` to ``to`` and log who, why, and the evidence. ``rung`` names the
    rung starting (to ``remediating``) or the one that ended (with its ``outcome``,
    ``succeeded`` or ``failed``: the history the planner reads). A closing state sets
    ``closed_at``.

    Raises:
        TransitionError: ``to`` is not reachable from the record's state, or the rung or
            outcome is not one gpuctl knows.
    """
    if to not in MOVES.get(record.state, frozenset()):
        allowed = ", ".join(sorted(MOVES.get(record.state, ()))) or "none (closed)"
        raise TransitionError(f"remediation {record.id} cannot go from {record.state} to "
                              f"{to}; allowed: {allowed}")
    if rung is not None and rung not in LADDER:
        raise TransitionError(f"unknown rung {rung!r}; rungs: {', '.join(LADDER)}")
    if outcome is not None and (outcome not in OUTCOMES or rung is None or
                                (outcome == "requested") != (rung == "rma")):
        raise TransitionError(f"outcome {outcome!r} of rung {rung!r}: a rung ends "
                              "succeeded or failed, and rma is requested")
    old = record.state
    record.state = to
    if rung is not None:
        record.rung = rung
    if to in CLOSED:
        record.closed_at = utcnow()
    session.add(record)
    return _event(session, record, old, to, actor=actor, message=message, rung=rung,
                  outcome=outcome, before=before, after=after)


def close(session: Session, record: Remediation, to: str, *, actor: str, message: str,
          after: dict[str, Any] | None = None) -> RemediationEvent:
    """Close ``record`` as ``in-service``, ``rma`` or ``failed`` (see ``advance``).
    Closing as ``rma`` records the ``rma`` rung as requested (the planner then asks for
    no second one).

    Raises:
        TransitionError: ``to`` is not a closing state or not reachable from the state.
    """
    if to not in CLOSED:
        raise TransitionError(f"{to!r} does not close a remediation; closing states: "
                              f"{', '.join(CLOSED)}")
    rung, outcome = ("rma", "requested") if to == "rma" else (None, None)
    return advance(session, record, to, actor=actor, message=message, rung=rung,
                   outcome=outcome, after=after)


def open_remediation_of(session: Session, node_id: int) -> Remediation | None:
    """The node's open record, if any."""
    return session.exec(select(Remediation).where(
        Remediation.node_id == node_id, col(Remediation.state).in_(OPEN))).first()


def events_of(session: Session, record: Remediation) -> list[RemediationEvent]:
    return list(session.exec(select(RemediationEvent)
                             .where(RemediationEvent.remediation_id == record.id)
                             .order_by(col(RemediationEvent.id))))


def attempts_of(session: Session, node_id: int,
                since: datetime | None = None) -> list[Attempt]:
    """The node's past attempts (every rung that ended, with its fault key and outcome),
    oldest first: the ``history`` ``plan_remediation`` reads."""
    query = (select(RemediationEvent, Remediation.fault)
             .join(Remediation, col(Remediation.id) == RemediationEvent.remediation_id)
             .where(Remediation.node_id == node_id,
                    col(RemediationEvent.outcome).is_not(None))
             .order_by(col(RemediationEvent.id)))
    rows: Sequence[Any] = session.exec(query).all()
    out = [Attempt(as_utc(ev.at), fault, str(ev.rung), str(ev.outcome))
           for ev, fault in rows]
    return [a for a in out if since is None or a.at >= as_utc(since)]


def _event(session: Session, record: Remediation, old: str | None, to: str, *,
           actor: str, message: str, rung: str | None = None, outcome: str | None = None,
           before: dict[str, Any] | None = None,
           after: dict[str, Any] | None = None) -> RemediationEvent:
    assert record.id is not None  # flushed by open_remediation
    event = RemediationEvent(remediation_id=record.id, actor=actor, from_state=old,
                             to_state=to, rung=rung, outcome=outcome, message=message,
                             evidence_before_json=json.dumps(before or {}, default=str),
                             evidence_after_json=json.dumps(after or {}, default=str))
    session.add(event)
    return event
