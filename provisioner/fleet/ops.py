"""Admin lifecycle operations: drain, undrain, retire, quarantine, release, remove.

Each applies to every named node or to none: all transitions are checked first, then
written in one transaction, each with an event naming who, when and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, delete, select

from provisioner.db.models import Event, NodeLock, Pool, PoolAllocation
from provisioner.errors import InputError, TransitionError
from provisioner.events import PoolsChanged, note_change
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import ALLOWED, State, get_node, remove_node, transition
from provisioner.runs import recover_abandoned

# Operation -> target state (undrain's target is the state the node was drained from).
TARGET = {"drain": State.DRAINED, "retire": State.RETIRED, "quarantine": State.QUARANTINED,
          "release": State.DISCOVERED}
NEEDS_REASON = {"quarantine", "release"}
UNDRAIN_BACK_TO = {State.CERTIFIED, State.IN_SERVICE, State.DISCOVERED}


@dataclass
class Change:
    node: str
    from_state: str
    to_state: str


def apply(gc: Gpuctl, op: str, names: list[str], reason: str | None = None) -> list[Change]:
    """Run lifecycle operation ``op`` on ``names``.

    Raises:
        InputError: no nodes, unknown node, or a reason missing where one is required;
        TransitionError: a node cannot make the move (the message lists what it can do);
        NodeBusyError-like TransitionError: a node is held by a running provision/burn-in.
    """
    if not names:
        raise InputError(f"name the nodes to {op}")
    if op in NEEDS_REASON and not (reason or "").strip():
        raise InputError(f"{op} needs --reason (it goes into the node's history)")
    actor = gc.actor
    why = (reason or "").strip()[:500] or f"{op} by {actor}"
    changes = []
    recover_abandoned(gc)
    with gc.session() as session:
        nodes = [get_node(session, n) for n in dict.fromkeys(names)]
        held = dict(session.exec(select(NodeLock.node_id, NodeLock.run_id).where(
            col(NodeLock.node_id).in_([n.id for n in nodes]))).all())
        plan = []
        for node in nodes:
            if node.id in held:
                raise TransitionError(f"{node.name} is held by run {held[node.id]}; wait for "
                                      "it to finish (or stop it) first")
            current = State(node.state)
            if op == "undrain":
                if current != State.DRAINED:
                    raise TransitionError(f"{node.name} is {current}, not drained")
                drained = session.exec(select(Event.from_state).where(
                    Event.node_id == node.id, Event.to_state == State.DRAINED.value)
                    .order_by(col(Event.id).desc()).limit(1)).first()
                target = State(drained) if drained in UNDRAIN_BACK_TO else State.DISCOVERED
            else:
                target = TARGET[op]
            if target == current:
                raise TransitionError(f"{node.name} is already {current}")
            if target not in ALLOWED[current]:
                allowed = ", ".join(sorted(ALLOWED[current])) or "none (final state)"
                raise TransitionError(f"{node.name} cannot {op} from {current} (to {target}); "
                                      f"allowed from {current}: {allowed}")
            plan.append((node, current, target))
        for node, current, target in plan:
            transition(session, node, target, actor=actor, reason=f"{op}: {why}")
            if target in (State.RETIRED, State.DISCOVERED):
                # A retired or released node no longer holds pool capacity.
                _free_pool_capacity(session, node.id)
            changes.append(Change(node.name, current.value, target.value))
    return changes


def _free_pool_capacity(session: Session, node_id: int | None) -> None:
    pools = session.exec(select(Pool.name).join(
        PoolAllocation, col(PoolAllocation.pool_id) == Pool.id).where(
        PoolAllocation.node_id == node_id)).all()
    session.exec(delete(PoolAllocation).where(col(PoolAllocation.node_id) == node_id))
    for name in sorted(set(pools)):
        note_change(session, PoolsChanged(name))


def remove_nodes(gc: Gpuctl, names: list[str]) -> list[str]:
    """Delete nodes with their snapshots and history (the schema cascades), all or none.
    A scheduler that had a removed node drains it: gpuctl no longer vouches for it.

    Raises:
        NotFoundError: any name is unknown; nothing is removed.
        TransitionError: a run holds one of the nodes; nothing is removed.
    """
    recover_abandoned(gc)
    with gc.session() as session:
        nodes = [get_node(session, n) for n in dict.fromkeys(names)]
        for node in nodes:
            lock = session.get(NodeLock, node.id)
            if lock is not None:
                raise TransitionError(f"{node.name} is held by run {lock.run_id}; wait for "
                                      "it to finish (or stop it) first")
        for node in nodes:
            _free_pool_capacity(session, node.id)
            remove_node(session, node, reason=f"removed from gpuctl by {gc.actor}")
    return names
