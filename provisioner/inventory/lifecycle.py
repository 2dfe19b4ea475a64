"""Node lifecycle states, the legal transitions, and the append-only event log."""

from __future__ import annotations

from enum import StrEnum

from sqlmodel import Session, select

from provisioner.db.models import Event, Node
from provisioner.errors import NotFoundError, TransitionError
from provisioner.events import REMOVED, StateChange, note_change


class State(StrEnum):
    REGISTERED = "registered"
    DISCOVERED = "discovered"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    BURNING_IN = "burning-in"
    CERTIFIED = "certified"
    IN_SERVICE = "in-service"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    DRAINED = "drained"
    RETIRED = "retired"


S = State
# States in which a node may run jobs.
SERVING = (State.CERTIFIED.value, State.IN_SERVICE.value)
ALLOWED: dict[State, frozenset[State]] = {
    S.REGISTERED: frozenset({S.DISCOVERED, S.FAILED, S.QUARANTINED, S.RETIRED}),
    S.DISCOVERED: frozenset({S.PROVISIONING, S.QUARANTINED, S.DRAINED, S.FAILED, S.RETIRED}),
    # Back to certified when a provision changed nothing a certificate depends on.
    S.PROVISIONING: frozenset({S.PROVISIONED, S.CERTIFIED, S.FAILED, S.QUARANTINED}),
    S.PROVISIONED: frozenset(
        {S.BURNING_IN, S.PROVISIONING, S.QUARANTINED, S.DRAINED, S.FAILED, S.RETIRED}
    ),
    S.BURNING_IN: frozenset({S.CERTIFIED, S.QUARANTINED, S.FAILED}),
    S.CERTIFIED: frozenset(
        {S.IN_SERVICE, S.BURNING_IN, S.PROVISIONING, S.QUARANTINED, S.DRAINED, S.RETIRED}
    ),
    S.IN_SERVICE: frozenset({S.DRAINED, S.QUARANTINED, S.RETIRED}),
    S.FAILED: frozenset({S.DISCOVERED, S.PROVISIONING, S.BURNING_IN, S.QUARANTINED, S.RETIRED}),
    # Back to provisioned when remediation ran a rung and a scan found the node clean:
    # a reset, reboot or power cycle changes nothing provisioning installed, and the
    # burn-in that follows decides (provisioner.heal).
    S.QUARANTINED: frozenset({S.DISCOVERED, S.PROVISIONED, S.RETIRED}),
    S.DRAINED: frozenset({S.DISCOVERED, S.CERTIFIED, S.IN_SERVICE, S.QUARANTINED, S.RETIRED}),
    S.RETIRED: frozenset(),
}


def get_node(session: Session, name: str) -> Node:
    """Raises NotFoundError naming the node when there is none by that name."""
    node = session.exec(select(Node).where(Node.name == name)).first()
    if node is None:
        raise NotFoundError(f"no node named {name!r} (see `gpuctl nodes list`)")
    return node


def transition(
    session: Session,
    node: Node,
    to: State,
    *,
    actor: str,
    reason: str,
    run_id: int | None = None,
) -> Event:
    """Move ``node`` to state ``to`` and append the event that says why. Once the
    session commits, the handle's listeners hear of the change (``provisioner.events``).

    Raises:
        TransitionError: ``to`` is not reachable from the node's state; the message
            lists the states that are.
    """
    current = State(node.state)
    if to not in ALLOWED[current]:
        allowed = ", ".join(sorted(ALLOWED[current])) or "none (final state)"
        raise TransitionError(
            f"node {node.name} cannot go from {current} to {to}; allowed: {allowed}"
        )
    node.state = to.value
    session.add(node)
    note_change(session, StateChange(node.name, current.value, to.value, reason, run_id))
    return record_event(
        session, node, "state", reason, actor=actor, run_id=run_id,
        from_state=current.value, to_state=to.value,
    )


def remove_node(session: Session, node: Node, *, reason: str) -> None:
    """Delete ``node`` with its snapshots and history (the schema cascades); listeners
    hear of it as a change to REMOVED (a scheduler drains the node: nothing vouches for
    it any more)."""
    note_change(session, StateChange(node.name, node.state, REMOVED, reason))
    session.delete(node)


def record_event(
    session: Session,
    node: Node,
    kind: str,
    reason: str,
    *,
    actor: str,
    run_id: int | None = None,
    severity: str = "info",
    from_state: str | None = None,
    to_state: str | None = None,
) -> Event:
    """Append one event row for ``node``; events are never updated."""
    assert node.id is not None
    ev = Event(
        node_id=node.id, run_id=run_id, actor=actor, kind=kind, reason=reason,
        severity=severity, from_state=from_state, to_state=to_state,
    )
    session.add(ev)
    return ev


def mark_hostkey_changed(session: Session, node: Node, message: str, *, actor: str,
                         run_id: int | None = None) -> None:
    """The node answered with another SSH host key than the one on file: flag it (every
    later scan, provision and burn-in refuses it until an admin runs ``gpuctl nodes
    forget-hostkey``) and log a critical event. Whichever SSH path saw it calls this."""
    if not node.hostkey_mismatch:
        node.hostkey_mismatch = True
        session.add(node)
    record_event(session, node, "hostkey", message, actor=actor, run_id=run_id,
                 severity="critical")
